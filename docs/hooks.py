"""MkDocs hook: put the committed benchmark plots on the site without copying them into docs/, and generate the
supported-models page from the committed walk.

Every `benchmarks/results/**/*.png` (the demo's `demo_loss_curves.png` included) is added to the site's files as
`results/**/*.png`, so a page under `docs/results/` shows `benchmarks/results/lr_transfer.png` as `lr_transfer.png`.
`models.md` is `hf_mup.lab.zoo.support_table` of `benchmarks/results/zoo/zoo.json` (written by `hf-mup zoo`): the
table cannot drift from the run.
"""
from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

from hf_mup.lab.zoo import load_rows, support_table

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def on_files(files: Files, config) -> Files:
    for png in sorted((BENCHMARKS / "results").rglob("*.png")):
        path = png.relative_to(BENCHMARKS).as_posix()   # results/<...>.png
        if files.get_file_from_path(path) is None:
            files.append(File(path, str(BENCHMARKS), config["site_dir"], config["use_directory_urls"]))
    version, rows = load_rows(BENCHMARKS / "results" / "zoo" / "zoo.json")
    files.append(File.generated(config, "models.md", content=support_table(rows, version)))
    return files
