"""The one home of a run: the stage graph built from the experiment (`graph`), preparation
(`prepare`), the stage bodies (`stages`: plain PyTorch and a `RunDir`, no Ray), per-epoch
checkpoints every executor shares (`checkpoints`), results and report files (`results`,
`report_files`), progress lines and live tracking, and the in-process executor (`local`).
The Ray executors live in `raydistill.distributed` and import this package, never the reverse."""
