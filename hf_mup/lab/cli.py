"""The `hf-mup` command line. Usage: `hf-mup inspect gpt2-config.json --base-hidden-size 256`,
`hf-mup sweep --widths 64,128 --log2-lrs=-10:-4:1 --out sweep_out`, `hf-mup transfer --study grid --target-config c.json`."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from pathlib import Path

from ..errors import MuPError
from ..extras import require
from ..logs import progress_enabled, quiet_progress_bars
from .configs import load_config
from .coord_check import COORD_CHECK_OPTIMIZERS, DEFAULT_BAND

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "vocab.txt")


def cmd_inspect(args: argparse.Namespace) -> int:
    import torch

    from .. import MuPModel, describe
    from ..model import unwrap

    if args.hparams:
        from .transfer import Transferred

        print(Transferred.load(args.hparams).describe())
        if args.config is None:
            return 0
    if args.config is None:
        raise MuPError("give a config (or checkpoint folder) to inspect, or --hparams hparams.json.")
    config = load_config(args.config)
    has_mup = args.base_hidden_size is not None or getattr(config, "mup", None)
    compressed = getattr(config, "compression", None) or getattr(config, "quantization_config", None)
    if args.size or (compressed and not has_mup):
        from .. import compress

        if not Path(args.config).is_dir():
            raise MuPError(f"--size counts the weights of a checkpoint: give a checkpoint folder, not {args.config}.")
        report = compress.size_report(compress.load(args.config))
        print(compress.format_report(report))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        if not has_mup:
            return 0
    if not has_mup:
        raise MuPError(f"{args.config} has no μP settings (config.mup): pass --base-hidden-size N.")
    with torch.device("meta"):  # nothing is allocated, whatever the size
        model = MuPModel.from_config(config, base_hidden_size=args.base_hidden_size, model_class=args.model_class)
        if args.lora:  # RANK[:module,module...]; PEFT's default targets for the model type without a list
            peft = _import_peft()
            rank, _, targets = args.lora.partition(":")
            lora = peft.LoraConfig(r=int(rank), target_modules=targets.split(",") if targets else None)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PEFT's notes: Conv1D's fan_in_fan_out set for you, deprecations
                model = peft.get_peft_model(model, lora)
    print(f"{type(unwrap(model)).__name__}, hidden size {config.hidden_size}" + (f", LoRA {args.lora}" if args.lora else ""))
    print(describe(model))
    return 0


def _import_peft():
    try:
        import peft
    except ImportError:
        raise MuPError("hf-mup inspect --lora adds PEFT's adapters: pip install peft") from None
    return peft


def cmd_compress(args: argparse.Namespace) -> int:
    from .. import compress

    # Everything that can refuse is checked before the weights are read, pruned or quantized (a GPT-2's Conv1D
    # layers, int4 group sizes, a missing torchao, the sparsity): on the model's shapes, built on the meta device.
    compress.check_checkpoint(args.checkpoint, args.sparsity, args.bits, args.scope)
    model = compress.load(args.checkpoint)
    if args.sparsity:
        compress.prune(model, args.sparsity, scope=args.scope, include_embeddings=args.include_embeddings)
    report = compress.save_compressed(model, args.out, bits=args.bits)
    for name in TOKENIZER_FILES:
        if (Path(args.checkpoint) / name).exists():
            shutil.copy(Path(args.checkpoint) / name, Path(args.out) / name)
    print(compress.format_report(report))
    print(f"saved the compressed {type(model).__name__} to {args.out} (size report: {args.out}/compression.json)")
    return 0


def cmd_fold(args: argparse.Namespace) -> int:
    from .. import MuPModel, fold

    model = fold(MuPModel.from_pretrained(args.checkpoint))
    model.save_pretrained(args.out)
    for name in TOKENIZER_FILES:
        if (Path(args.checkpoint) / name).exists():
            shutil.copy(Path(args.checkpoint) / name, Path(args.out) / name)
    print(f"saved the folded (stock {type(model).__name__}) model to {args.out}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MuPError(f"expected comma-separated integers, got {text!r}") from None
    return values


def cmd_coord_check(args: argparse.Namespace) -> int:
    import csv

    from . import coord_check as cc

    widths = _int_list(args.widths)
    params = [p.strip() for p in args.parametrization.split(",") if p.strip()]
    base = args.base_width or (widths[0] if widths else 0)
    cc.check_inputs(args.arch, widths, params, args.head_dim, base, args.steps, args.seeds)
    require("sweep", "matplotlib", what="hf-mup coord-check (its plot, coord_check.png)")
    records = cc.coord_check(
        args.arch, widths=widths, steps=args.steps, lr=args.lr, optimizer=args.optimizer, parametrizations=params,
        seeds=range(args.first_seed, args.first_seed + args.seeds), base_width=base, n_layer=args.layers,
        head_dim=args.head_dim, seq_len=args.seq_len, batch_size=args.batch_size,
        mup_options={k: getattr(args, k) for k in ("input_mult", "output_mult", "attn_mult")},
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "coord_check.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["parametrization", "width", "seed", "step", "module", "value"])
        writer.writeheader()
        writer.writerows(records)
    rows = cc.slopes(records)
    band = (args.low, args.high)
    print(f"log-log slope of mean |activation| against width ({', '.join(map(str, widths))}), mean of "
          f"{args.seeds} seed(s); μP band {band}")
    steps = sorted({r["step"] for r in rows})
    by = {(r["parametrization"], r["module"], r["step"]): r["slope"] for r in rows}
    modules = list(dict.fromkeys(r["module"] for r in rows))
    header = ["module"] + [f"{p} t={t}" for p in params for t in steps]
    table = [header] + [[m] + [f"{by.get((p, m, t), float('nan')):+.2f}" for p in params for t in steps] for m in modules]
    widths_col = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths_col))))
    code = 0
    if "mup" in params:  # the verdict first: nothing after it (the plot) can hide it
        if args.steps > cc.VERDICT_STEPS:
            print(f"note: the band was measured for --steps {cc.VERDICT_STEPS}; later steps of a correct μP model can "
                  "leave it at small widths (the calibration: docs/results/cost.md).")
        bad = cc.verdict(rows, band)
        if bad:
            print(f"FAIL: {len(bad)} μP slope(s) outside {band}: "
                  + ", ".join(f"{r['module']} t={r['step']} {r['slope']:+.2f}" for r in bad[:10]))
            code = 1
        else:
            print("PASS: every μP slope is inside the band")
    cc.plot(records, str(out / "coord_check.png"))
    print(f"wrote {out / 'coord_check.csv'} and {out / 'coord_check.png'}")
    return code


def sweep_spec(args: argparse.Namespace, widths: list[int], lrs: list[float]):
    """The `SweepSpec` of `hf-mup sweep`'s flags (the library validates it)."""
    from .data import Corpus
    from .recipe import Recipe
    from .sweep import SweepSpec

    mup = {"input_mult": args.input_mult, "output_mult": args.output_mult, "attn_mult": args.attn_mult}
    if args.base_layers is not None:
        mup.update(base_num_layers=args.base_layers, depth_alpha=args.depth_alpha)
    corpus = Corpus(tokenizer=args.tokenizer, vocab_size=args.vocab_size, masked=args.arch == "bert",
                    train_file=args.train_file, val_file=args.val_file, dataset=args.dataset,
                    dataset_config=args.dataset_config, text_column=args.text_column, train_chars=args.train_chars,
                    val_blocks=args.val_blocks)
    # grid: each point sets its width, so the spec keeps the base width (a grid can grow); tune: the proxy's width
    width = (args.base_width or widths[0]) if args.mode == "grid" else widths[0]
    recipe = Recipe(arch=args.arch, width=width, layers=args.layers, head_dim=args.head_dim, seq_len=args.seq_len,
                    vocab_size=corpus.vocab_size, initializer_range=args.initializer_range,
                    base_width=args.base_width or widths[0], mup=mup, warmup_frac=args.warmup,
                    final_lr_frac=args.final_lr_frac, clip=args.clip, batch_size=args.batch_size, steps=args.steps,
                    weight_decay_timescale=args.weight_decay_timescale)
    return SweepSpec(args.mode, recipe, corpus, (min(lrs), max(lrs)))


def cmd_sweep(args: argparse.Namespace) -> int:
    import torch

    require("sweep", "optuna", "sqlalchemy", "matplotlib", "tqdm", what="hf-mup sweep")
    if args.dataset:
        require("train", "datasets", what="hf-mup sweep --dataset (a Hub dataset)")
    from . import sweep as sw
    from .results import report, trial_line
    from .search import MIN_FRACTION, check_search, confirm_top, run_search
    from .storage import default_storage, safe_url

    sw.check_arch(args.arch)
    widths = _int_list(args.widths)
    sw.check_widths(widths)
    lrs = sw.parse_log2_lrs(args.log2_lrs) + sw.parse_log2_lrs(args.extra_log2_lrs)
    if not lrs:
        raise MuPError("The log2-LR grid is empty: give e.g. --log2-lrs=-12:-4:1.")
    params = [p.strip() for p in args.parametrization.split(",") if p.strip()]
    axes = sw.parse_axes(args.mode, args.batch_sizes, args.tokens, args.timescales)
    points = sw.grid_points(widths, lrs, params, args.seeds, *axes) if args.mode == "grid" else []
    if args.mode == "tune" and len(widths) != 1:
        raise MuPError(f"tune mode tunes at one proxy width: give exactly one, e.g. --widths {widths[-1]}.")
    if args.mode == "tune":
        sw.check_n_trials(args.n_trials)
        min_steps = args.min_steps or max(1, args.steps // MIN_FRACTION)
        check_search(args.pruner, args.n_trials, args.steps, min_steps, args.brackets)
    elif args.brackets != 1:
        raise MuPError("--brackets splits --pruner sha's trials: use it with --mode tune --pruner sha.")
    if args.eval_every and (args.mode != "tune" or args.pruner in ("none", "sha")):
        raise MuPError("--eval-every is how often a pruner hears the validation loss: use it with --mode tune and "
                       "--pruner asha, hyperband or median (sha compares at its rungs).")
    if args.checkpoint_dir and (args.mode != "tune" or args.pruner != "sha"):
        raise MuPError("--checkpoint-dir is where --pruner sha pauses its trials: use it with --mode tune --pruner sha.")
    sw.check_grid(widths, args.head_dim, args.base_width)
    spec = sweep_spec(args, widths, lrs)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    data = spec.load_data(out)
    storage = args.storage or default_storage(out)
    study = sw.open_study(args.study or args.mode, storage, spec.stamp(data), args.heartbeat)
    print(f"study {study.study_name!r} in {safe_url(storage)}: {len(study.trials)} trial(s) so far; "
          f"data {data[0].numel()} train / {data[1].numel()} validation tokens, vocab {spec.data.vocab_size}")
    if args.estimate:
        est = sw.estimate_seconds(spec, points or [{"parametrization": "mup", "width": widths[0]}], data)
        n = len(points) or args.n_trials
        total = est["total_seconds"] * (1 if points else n)
        print(f"estimated seconds per trial: {est['seconds_per_trial']}; {n} trials: {total / 60:.1f} min")
        return 0
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    progress = not args.no_progress and progress_enabled()  # bars on a terminal only, never in a log

    def write(st):  # CSV + JSON after every trial; a line per trial where there are no bars (a log)
        report(st, out, plot_name=None)
        if not progress:
            print(trial_line(st), flush=True)

    if args.mode == "grid":
        study.sampler = sw.optuna.samplers.RandomSampler()  # grid points are fixed; nothing to sample
        sw.run_grid(study, spec, points, data, device, progress, after_trial=write)
    else:
        study.sampler = sw.make_sampler(args.sampler, args.seed, len(study.trials))
        run_search(study, spec, args.n_trials, data, args.pruner, min_steps,
                   args.checkpoint_dir or out / "checkpoints" / study.study_name, device, progress, write,
                   args.eval_every, args.brackets)
        if args.confirm_top:  # the top trials rerun with more seeds: transfer takes the best seed-mean
            confirm_top(study, spec, data, args.confirm_top, args.confirm_seeds, device, progress)
    result = report(study, out, metric=f"{args.metric}_loss")
    print(f"wrote {out / 'results.csv'} and {out / 'results.json'}"
          + (f" and {out / 'lr_transfer.png'}" if args.mode == "grid" else ""))
    if "horizon_fit" in result:  # a grid over batch sizes / tokens / timescales
        print(f"horizon fit: {result['horizon_fit']['summary']}; wrote {out / 'horizon_fit.json'}, horizon.png")
    if args.mode == "grid":
        for param, o in result["optimum"][f"{args.metric}_loss"].items():
            best = ", ".join(f"w{w}: {v['log2_lr']:g}" if v["log2_lr"] is not None else f"w{w}: -"
                             for w, v in o["optimum"].items())
            print(f"{param}: best log2 LR by {args.metric} loss {best}; drift {o['drift']}")
    elif result["best"]:
        b = result["best"]
        print(f"best trial {b['number']}: val loss {b['val_loss']:.4f}, log2 LR {b['log2_lr']:.2f}, init "
              f"{b['initializer_range']:.4g}, input_mult {b['input_mult']:.3g}, output_mult {b['output_mult']:.3g}, "
              f"attn_mult {b['attn_mult']:.3g}")
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    require("sweep", "optuna", "sqlalchemy", what="hf-mup transfer (it reads an Optuna study)")
    from .storage import default_storage, load_study
    from .transfer import transfer

    storage = args.storage or default_storage(args.out)
    study = load_study(args.study, storage)
    result = transfer(study, load_config(args.target_config), args.target_tokens, args.batch_size,
                      args.allow_depth_change, args.rule, json.loads(Path(args.fit).read_text()) if args.fit else None,
                      args.allow_extrapolation)
    result.save(args.output)
    print(result.summary())
    print(f"wrote {args.output}")
    return 0


def add_model_args(p: argparse.ArgumentParser, seq_len: int, batch_size: int) -> None:
    """The small GPT-2/BERT shape and the μP multipliers, shared by coord-check and sweep."""
    p.add_argument("--base-width", type=int, help="μP base width (default: the smallest width)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=seq_len)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--input-mult", type=float, default=1.0)
    p.add_argument("--output-mult", type=float, default=1.0)
    p.add_argument("--attn-mult", type=float, default=1.0)


def cmd_zoo(args: argparse.Namespace) -> int:
    from ..extras import installed
    from .zoo import run

    if not installed("mup"):
        raise MuPError("hf-mup zoo checks per-tensor LRs against microsoft/mup: pip install --no-deps mup")

    only = [t.strip() for t in args.only.split(",") if t.strip()] if args.only else None
    rows = run(Path(args.out), only, coords=not args.no_coord_check)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("verified", "failed", "refused", "skipped")}
    print(", ".join(f"{n} {s}" for s, n in counts.items()) + f"; table: {Path(args.out) / 'models.md'}")
    return 1 if counts["failed"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-mup", description="μP and μTransfer for Hugging Face Transformers.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="show what μP does to every parameter of a model")
    p.add_argument("config", nargs="?", help="a config.json, a checkpoint folder, or a Hub model (owner/name)")
    p.add_argument("--hparams", help="an hparams.json: its per-group LR and decay, batch, steps, warmup, moves")
    p.add_argument("--base-hidden-size", type=int, help="the proxy's width (read from config.mup when omitted)")
    p.add_argument("--model-class", help="e.g. GPT2ForSequenceClassification (default: config.architectures[0])")
    p.add_argument("--size", action="store_true", help="also load the checkpoint and report its inference size "
                   "(params, nonzeros, bits, bytes); automatic for a compressed checkpoint")
    p.add_argument("--json", help="with --size: write the per-tensor size report here")
    p.add_argument("--lora", metavar="RANK[:MODULES]", help="add PEFT LoRA adapters (e.g. 8, 8:q_proj,v_proj) and "
                   "show their μP rules")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("compress", help="prune and/or quantize a checkpoint (a μP one is folded already)")
    p.add_argument("checkpoint", help="a checkpoint folder (μP or stock)")
    p.add_argument("out", help="where to save the compressed stock checkpoint")
    p.add_argument("--sparsity", type=float, default=0.0, help="fraction of the Linear weights to prune, in [0, 1)")
    p.add_argument("--scope", default="global", choices=["global", "layer"], help="smallest |w| overall or per layer")
    p.add_argument("--include-embeddings", action="store_true", help="prune the embeddings (and a tied readout) too")
    p.add_argument("--bits", type=int, choices=[8, 4], help="weight-only quantization (torchao)")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("coord-check", help="coordinate check: activation size against width, μP beside SP")
    p.add_argument("--arch", default="gpt2", help="gpt2, bert, llama or mixtral")
    p.add_argument("--widths", default="64,128,256,512", help="comma-separated, increasing")
    p.add_argument("--steps", type=int, default=3, help="forwards recorded, t=0 at init (the band holds for 3)")
    p.add_argument("--optimizer", default="adamw", choices=list(COORD_CHECK_OPTIMIZERS))
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--parametrization", default="mup,sp", help="comma-separated: mup, sp, mup_global_lr")
    p.add_argument("--seeds", type=int, default=3, help="seeds averaged (a μP verdict needs 2 or more)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ...")
    add_model_args(p, seq_len=32, batch_size=8)
    p.add_argument("--low", type=float, default=DEFAULT_BAND[0], help="lowest slope μP may show")
    p.add_argument("--high", type=float, default=DEFAULT_BAND[1], help="highest slope μP may show")
    p.add_argument("--out", default="coord_check_out", help="folder for coord_check.csv and coord_check.png")
    p.set_defaults(func=cmd_coord_check)

    p = sub.add_parser("fold", help="fold μP into the weights and save a stock transformers model")
    p.add_argument("checkpoint", help="a μP checkpoint saved with save_pretrained")
    p.add_argument("out", help="where to save the stock model")
    p.set_defaults(func=cmd_fold)

    p = sub.add_parser("sweep", help="LR-transfer grid (Figure 1) or proxy tuning, as a resumable Optuna study")
    p.add_argument("--mode", default="grid", choices=["grid", "tune"], help="grid: widths × LRs × seeds; tune: Optuna")
    p.add_argument("--arch", default="gpt2", help="gpt2, llama or mixtral (causal LMs; mixtral: 4 experts, 2 per "
                   "token) or bert (masked LM: 15%% of tokens masked)")
    p.add_argument("--widths", default="64,128,256,512", help="comma-separated, increasing (tune: the one proxy width)")
    p.add_argument("--log2-lrs", default="-12:-4:1", help="start:stop:step or a list; write --log2-lrs=-12:-4:1 "
                   "(tune: the range searched)")
    p.add_argument("--extra-log2-lrs", default="", help="extra grid points, e.g. --extra-log2-lrs=-7.5,-6.5")
    p.add_argument("--parametrization", default="mup,sp", help="comma-separated: mup, sp (grid mode)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per grid point (init and data order)")
    p.add_argument("--n-trials", type=int, default=20, help="tune mode: trials wanted in the study (complete or pruned)")
    p.add_argument("--sampler", default="tpe", choices=["tpe", "random"], help="tune mode sampler")
    p.add_argument("--pruner", default="none", choices=["none", "asha", "sha", "hyperband", "median"],
                   help="tune mode: stop hopeless trials early on their validation loss (hf_mup.lab.search); sha: "
                   "synchronous successive halving, which pauses trials at each rung (--checkpoint-dir) and goes "
                   "on with the best third (hf_mup.lab.halving)")
    p.add_argument("--brackets", type=int, default=1, help="--pruner sha: split the trials into this many successive "
                   "halvings run one after the other, so that TPE learns from full-length trials (hf_mup.lab.halving)")
    p.add_argument("--checkpoint-dir", help="--pruner sha: where paused trials wait, shared by every worker of the "
                   "study (default: OUT/checkpoints/STUDY)")
    p.add_argument("--min-steps", type=int, help="with --pruner: no trial is stopped before this step (--steps/3); "
                   "sha: the first rung")
    p.add_argument("--confirm-top", type=int, default=0, help="tune mode: rerun this many best trials with "
                   "--confirm-seeds seeds; transfer takes the best seed-mean and says whether it wins beyond noise")
    p.add_argument("--confirm-seeds", type=int, default=3, help="seeds per confirmed trial, the search's own included")
    p.add_argument("--eval-every", type=int, help="with --pruner: validate every this many steps (--min-steps)")
    p.add_argument("--seed", type=int, default=0, help="tune mode sampler seed")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-sizes", help="grid: also at these batch sizes, e.g. 8,16,32 (fits horizon_fit.json)")
    p.add_argument("--tokens", help="grid: also at these token horizons, e.g. 25k,100k (steps = tokens/(batch·seq))")
    p.add_argument("--timescales", help="grid: also at these weight-decay timescales (fractions of training)")
    p.add_argument("--weight-decay-timescale", type=float, default=0.0, help="AdamW's decay as a timescale; 0: none")
    add_model_args(p, seq_len=64, batch_size=16)
    p.add_argument("--base-layers", type=int, help="depth scaling (CompleteP) with this base depth, so the tuned "
                   "settings transfer to other depths (e.g. --base-layers 2 with --layers 2); default: off")
    p.add_argument("--depth-alpha", type=float, default=1.0, help="depth exponent α in [0.5, 1] (1: CompleteP)")
    p.add_argument("--warmup", type=float, default=0.1, help="linear warmup, fraction of --steps")
    p.add_argument("--final-lr-frac", type=float, default=0.1, help="cosine decay ends at this fraction of the LR")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (0: none)")
    p.add_argument("--initializer-range", type=float, default=0.02)
    p.add_argument("--tokenizer", default="bpe", choices=["bpe", "bytes"], help="BPE trained locally, or raw bytes")
    p.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary size (bert: [MASK] included; "
                   "bytes: 256, bert 257)")
    p.add_argument("--train-file", help="local text (default: WikiText-2 valid.txt shipped with hf_mup)")
    p.add_argument("--val-file", help="local text (default: WikiText-2 test.txt)")
    p.add_argument("--train-chars", type=int, help="use only the first N characters of the train file")
    p.add_argument("--val-blocks", type=int, default=128, help="validation sequences")
    p.add_argument("--dataset", help="a datasets Hub name (online), e.g. wikitext")
    p.add_argument("--dataset-config", help="e.g. wikitext-2-raw-v1")
    p.add_argument("--text-column", default="text")
    p.add_argument("--study", help="study name (default: the mode)")
    p.add_argument("--storage", help="RDB URL shared by many workers (default: sqlite:///OUT/sweep.db)")
    p.add_argument("--out", default="sweep_out", help="folder for results.csv, results.json, lr_transfer.png")
    p.add_argument("--metric", default="train", choices=["train", "val"], help="loss plotted and argmin'd")
    p.add_argument("--heartbeat", type=int, default=10, help="seconds; a trial silent for 3× is retried")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when available)")
    p.add_argument("--estimate", action="store_true", help="time a few steps, print the estimated run time, exit")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("transfer", help="write the target's μP settings and LR from a sweep's best proxy trial")
    p.add_argument("--study", required=True)
    p.add_argument("--storage", help="RDB URL (default: sqlite:///OUT/sweep.db)")
    p.add_argument("--out", default="sweep_out", help="the sweep's folder, when --storage is not given")
    p.add_argument("--target-config", required=True, help="the target's config.json (or checkpoint folder)")
    p.add_argument("--target-tokens", type=float, help="target training tokens (default: 20 per parameter)")
    p.add_argument("--batch-size", type=int, help="the target's batch (default: the proxy's); steps = tokens / batch")
    p.add_argument("--rule", default="published", choices=["published", "fitted", "copy"], help="how the LR, decay "
                   "and warmup move to the target's batch and tokens (docs: Batch size and training length)")
    p.add_argument("--fit", help="with --rule fitted: the horizon_fit.json of a sweep over --batch-sizes / --tokens")
    p.add_argument("--allow-extrapolation", action="store_true", help="accept a target > 8× outside the fit's range")
    p.add_argument("--allow-depth-change", action="store_true", help="copy the settings to a target of another "
                   "depth although the proxy was tuned without depth scaling (--base-layers): the optimum may move")
    p.add_argument("--output", default="hparams.json")
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser("zoo", help="verify every transformers text model in μP (tiny models, all checks): the "
                       "supported-models table")
    p.add_argument("--out", default="zoo_out", help="folder for zoo.json and models.md (resumable)")
    p.add_argument("--only", help="comma-separated model types (default: every one in transformers' LM mappings)")
    p.add_argument("--no-coord-check", action="store_true", help="skip the coordinate check (4 widths)")
    p.set_defaults(func=cmd_zoo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_progress_bars()  # transformers' loading / saving bars only on a terminal
    try:
        return args.func(args)
    except MuPError as e:
        print(f"hf-mup: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
