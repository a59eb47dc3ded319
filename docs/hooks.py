"""MkDocs hooks (mkdocs.yml `hooks:`): pages and figures generated from the code at build time.

- reference/config.md: the config reference, from raydistill/config.py (gen_config_reference.py);
  a config field without a description fails the build.
- assets/ed_plan_<experiment>.svg: ED's plan as the trainer builds it (gen_plan_figure.py).
- results/plots/*.svg: plots of the committed results (gen_results_plots.py).
- benchmarks/results/...: committed benchmark figures, served from where they are committed.
"""
from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(DOCS))      # mkdocs restores sys.path after loading this module: import now
try:
    import gen_config_reference
    import gen_plan_figure
    import gen_results_plots
finally:
    sys.path.remove(str(DOCS))

# committed figures the pages show, relative to the repository root
COMMITTED_FIGURES = ["benchmarks/results/ed_evidence/curve.png", "benchmarks/results/default_run/curves.png",
                     "benchmarks/results/searched_curricula/search.png", "benchmarks/results/pbt/population.png"]


def on_files(files, config):
    files.append(File.generated(config, "reference/config.md", content=gen_config_reference.render()))
    for name, svg in gen_plan_figure.figures().items():
        files.append(File.generated(config, f"assets/{name}", content=svg))
    for name, svg in gen_results_plots.plots().items():
        files.append(File.generated(config, f"results/plots/{name}", content=svg))
    for path in COMMITTED_FIGURES:
        files.append(File(path, src_dir=str(REPO), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files
