"""Exports: a composite recipe over an area, computed in chunks (local processes or SLURM job arrays),
merged into one Cloud-Optimized GeoTIFF, written under the export root or uploaded to S3.

Modules: `models` (request, plan, record, validation), `chunks` (output grid chunking), `store`
(SQLite records), `worker` (one chunk), `merge` (assemble + deliver), `executors` (local pool, SLURM),
`service` (submit/list/cancel/reconcile), `api` (FastAPI router under /exports).
"""
