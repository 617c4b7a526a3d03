"""Exports: a composite recipe over an area, computed in chunks (local processes or SLURM job arrays),
merged into one Cloud-Optimized GeoTIFF, written under the export root or uploaded to S3.

Modules in layers, each importing only from layers below it (tests/test_export_layers.py checks):

1. `chunks` (output grid chunking), `leases` (which process runs or merges an export)
2. `plan` (ExportPlan, ExportRecord, estimates: plain data, no I/O)
3. `workdir` (an export's files and logs), then `destinations` (the export root, S3)
4. `request` (validation of a request into a plan), `store` (records, chunk claims, leases)
5. `worker` (computes chunks), `merge` (assembles and delivers the result)
6. `jobs` (the worker processes' commands and entry points), then `executors` (local pool, SLURM)
7. `service` (submit, list, cancel, reconcile), then `api` (FastAPI router under /exports) and `cli`
"""
