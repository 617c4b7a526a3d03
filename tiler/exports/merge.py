"""The final step: assemble the chunks into one COG (rio-cogeo) or tiled GeoTIFF and deliver it.

Run as `jeo export-merge --export ID` (a SLURM job) or by the local worker that completes the last
chunk. The merging process holds the export's `merge` lease (one merge at a time; a merge whose
process died is taken over, and the lease's token counts merges). The chunks are mosaicked through a
VRT (they tile the output grid exactly), translated to `<work>/merge/result-<pid>.tif`, checked with
`cog_validate`, then moved into the export root or uploaded to S3 with boto3, without replacing
anything unless `overwrite` is set. The export becomes `finished` only after delivery, with the current
lease token (and then handed to `publish`); if it was canceled meanwhile, the delivered file is removed again.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from xml.sax.saxutils import escape

import rasterio
import rasterio.shutil
from rio_cogeo.cogeo import cog_translate, cog_validate
from rio_cogeo.profiles import cog_profiles

from tiler.exports.destinations import delete_result, deliver
from tiler.exports.leases import MERGE, Heartbeat, process_token, terminate_as_exit
from tiler.exports.plan import ACTIVE, ExportPlan, ExportRecord, redact
from tiler.exports.store import ExportStore
from tiler.exports.workdir import chunk_path, merge_dir, merge_log, remove_partials, tail

# --- assembling -----------------------------------------------------------------------------------


def write_vrt(plan: ExportPlan, path: Path) -> Path:
    """A VRT mosaicking the chunk files onto the output grid."""
    crs = plan.rasterio_crs
    t = plan.affine
    geotransform = ", ".join(repr(float(v)) for v in (t.c, t.a, t.b, t.f, t.d, t.e))
    bands = []
    for band, description in enumerate(plan.descriptions, 1):
        sources = []
        for chunk, window in enumerate(plan.windows):
            sources.append(
                f"""    <SimpleSource>
      <SourceFilename relativeToVRT="0">{escape(str(chunk_path(plan, chunk)))}</SourceFilename>
      <SourceBand>{band}</SourceBand>
      <SourceProperties RasterXSize="{window.width}" RasterYSize="{window.height}" DataType="Float32" BlockXSize="256" BlockYSize="256"/>
      <SrcRect xOff="0" yOff="0" xSize="{window.width}" ySize="{window.height}"/>
      <DstRect xOff="{window.col_off}" yOff="{window.row_off}" xSize="{window.width}" ySize="{window.height}"/>
    </SimpleSource>"""
            )
        bands.append(
            f"""  <VRTRasterBand dataType="Float32" band="{band}">
    <Description>{escape(description)}</Description>
    <NoDataValue>nan</NoDataValue>
{chr(10).join(sources)}
  </VRTRasterBand>"""
        )
    xml = f"""<VRTDataset rasterXSize="{plan.width}" rasterYSize="{plan.height}">
  <SRS dataAxisToSRSAxisMapping="1,2">{escape(crs.to_wkt())}</SRS>
  <GeoTransform>{geotransform}</GeoTransform>
{chr(10).join(bands)}
</VRTDataset>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(xml)
    return path


def assemble(plan: ExportPlan, output: Path, threads: str = "ALL_CPUS") -> Path:
    """Write the whole output (COG or tiled GeoTIFF) from the chunk files with `threads` GDAL threads."""
    missing = [i for i in range(plan.chunks_total) if not chunk_path(plan, i).exists()]
    if missing:
        raise RuntimeError(f"chunk file(s) missing: {missing[:20]}")
    vrt = write_vrt(plan, output.with_suffix(".vrt"))
    tags = {"JEO_EXPORT_ID": plan.id, "JEO_COLLECTION": plan.collection, "JEO_METHOD": plan.compositing["method"]}
    if plan.format == "cog":
        profile = cog_profiles.get("deflate")
        profile.update(predictor=3, bigtiff="IF_SAFER", blockxsize=512, blockysize=512)
        cog_translate(
            str(vrt), str(output), profile, nodata=float("nan"), overview_resampling="average",
            in_memory=False, quiet=True, additional_cog_metadata=tags,
            config={"GDAL_NUM_THREADS": threads, "GDAL_TIFF_OVR_BLOCKSIZE": 512},
        )  # fmt: skip
        valid, errors, _ = cog_validate(str(output), quiet=True)
        if not valid:
            raise RuntimeError(f"the merged file is not a valid COG: {errors}")
    else:
        with rasterio.Env(GDAL_NUM_THREADS=threads):
            rasterio.shutil.copy(
                str(vrt), str(output), driver="GTiff", tiled=True, blockxsize=512, blockysize=512,
                compress="deflate", predictor=3, bigtiff="IF_SAFER", num_threads=threads,
            )  # fmt: skip
        with rasterio.open(output, "r+") as dst:
            dst.update_tags(**tags)
    return output


def run_merge(store: ExportStore, export_id: str, wait: bool = True, threads: str = "ALL_CPUS",
              publish: Callable[[ExportRecord], object] | None = None) -> int:
    """Assemble and deliver, holding the export's `merge` lease, then `publish` the finished export (`jobs`: as an
    item of the collection `exports`); the process exit code (0 also when the export is no longer active or another
    live process merges it). With `wait`, wait for such a process to end first."""
    holder = process_token()
    token = store.acquire(export_id, MERGE, holder)
    while token is None and wait and store.status(export_id) in ACTIVE:
        time.sleep(1)
        token = store.acquire(export_id, MERGE, holder)
    record = store.require(export_id)
    plan = record.plan
    if token is None:
        print(f"export {export_id} is {record.status}" + (": another process merges it" if record.active else ""),
              flush=True)
        return 0
    fence = (MERGE, token)
    states = store.chunk_states(export_id)
    missing = [i for i in range(plan.chunks_total) if states.get(i) != "done"]
    if missing:
        print(f"export {export_id}: chunk(s) {missing[:20]} not computed", flush=True)
        if store.transition(export_id, "failed", fence=fence, error=f"merge failed: chunk(s) {missing[:20]} not computed",
                            log_tail=tail(merge_log(plan))):
            remove_partials(plan)
        return 1
    print(f"export {export_id}: merge {token} of {plan.chunks_total} chunks into {plan.format} "
          f"({plan.width}×{plan.height})", flush=True)
    store.mark_running(export_id)
    start = time.perf_counter()
    output = merge_dir(plan) / f"result-{os.getpid()}.tif"  # per process: a stray second merge cannot clash
    output.parent.mkdir(parents=True, exist_ok=True)
    beat = max(0.5, min(10.0, store.lease_timeout / 4))
    try:
        with terminate_as_exit(), Heartbeat(lambda: store.renew(export_id, MERGE, token), beat) as heartbeat:
            assemble(plan, output, threads)
            print(f"assembled in {time.perf_counter() - start:.2f} s ({output.stat().st_size:,} bytes)", flush=True)
            status = store.status(export_id)
            if status != "running" or heartbeat.lost.is_set() or not store.holds(export_id, MERGE, token):
                print(f"export {export_id} is {status}, merge lease {token} "
                      f"{'held' if store.holds(export_id, MERGE, token) else 'lost'}: result discarded", flush=True)
                if status in ("failed", "canceled"):
                    remove_partials(plan)
                return 0
            href = deliver(plan, output)
            if not store.transition(export_id, "finished", fence=fence, result=href):
                if store.status(export_id) == "canceled":
                    print(f"export {export_id} was canceled during delivery: result removed", flush=True)
                    delete_result(plan)
                else:  # another merge holds the lease now; it delivers the same result
                    print(f"export {export_id}: merge lease {token} lost during delivery", flush=True)
                return 0
    except Exception as error:  # noqa: BLE001
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        if store.transition(export_id, "failed", fence=fence, error=redact(f"merge failed: {error}"),
                            log_tail=tail(merge_log(plan)) or redact(traceback.format_exc())):
            remove_partials(plan)
        return 1
    finally:
        output.unlink(missing_ok=True)
        output.with_suffix(".vrt").unlink(missing_ok=True)
    remove_partials(plan)
    print(f"export {export_id} finished in {time.perf_counter() - start:.2f} s: {href}", flush=True)
    if publish is not None:
        publish(store.require(export_id))
    return 0
