"""The lab: what hf_mup uses to measure and transfer μP, apart from the core that implements it.

- `recipe`: what a run trains with, one frozen dataclass that round-trips through JSON.
- `lm`, `data`, `tasks`: small LMs, offline data, fine-tuning tasks; `train`: the one training loop.
- `coord_check`: coordinate checks; `sweep` (with `storage`, `results`): Optuna studies; `transfer`: proxy to target.
- `pipeline` (with `presets`): μTransfer end to end; `demo`; `cli`: the `hf-mup` command line.

The lab imports the core (`hf_mup`); nothing in the core imports the lab. Modules are imported on demand:
`from hf_mup.lab import sweep`.
"""
