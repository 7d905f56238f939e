"""The transformers model zoo in μP, verified model by model (`hf-mup zoo`).

Every model type in transformers' causal-LM and masked-LM auto mappings is built from a tiny config and put through
hf_mup: it converts, or is refused with the reason. For those that convert, the checks:

- `oracle`: per-tensor learning rates (Adam and SGD) equal microsoft/mup's (`set_base_shapes` + MuAdamW / MuSGD).
- `init`: each hidden weight's init std is the stock one × 1/√m, readouts (but routers) and queries are zero.
- `base_width`: at width = base, the μP model is the stock model: same logits at init and after 2 Adam steps with
  `mup_param_groups` against the stock model's plain AdamW.
- `fold`: after 2 steps, `save_pretrained` → the stock `AutoModelFor*` and `MuPModel.from_pretrained` give the μP
  model's logits, and `generate()` (causal LMs) the same tokens; again with the word embeddings tied the other way
  (`fold_tied` / `fold_untied`: a tied readout's multiplier is folded into the norm before it).
- `attention`: with `attn_mult` 2, each attention module's `scaling` is read (changing it changes the logits) and the
  factor folds into the checkpoint; a hard-coded scale refuses `attn_mult` 2.
- `coord_check`: mean |activation| of every layer's output, of the logits (and of an MoE's router logits) against
  width (4 widths) after 1 and 2 Adam steps, and of the token embeddings' share of the first hidden state at init:
  the log-log slope must stay in the coordinate check's band
  (`DEFAULT_BAND`: growth is what μP prevents; the init's share shrinks as width^-1/2) for μP; the stock model's
  logits slope is shown beside it.

Usage: `hf-mup zoo --out benchmarks/results/zoo` (all), `hf-mup zoo --only llama,mixtral` (some).
"""
from __future__ import annotations

import contextlib
import io
import json
import time
import traceback
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .coord_check import DEFAULT_BAND
from .zoo_checks import (
    BASE,
    COORD_STEPS,
    HEAD_DIM,
    MOE_FIELDS,
    WIDTHS,
    check_attention,
    check_base_width,
    check_coords,
    check_fold,
    check_init,
    check_oracle,
    is_masked_lm,
    logits_of,
    mup_model,
    stock_model,
    tiny_config,
    token_batch,
)

CHECKS = ("convert", "oracle", "init", "base_width", "fold", "fold_tied", "fold_untied", "attention", "coord_check")
MAX_PARAMETERS = 20_000_000  # at width 128: a config with sizes the walk does not set is not tiny


def model_types() -> list[tuple[str, str]]:
    """(model type, the class checked: its masked LM, else its causal LM) for every text model in the mappings."""
    from transformers.models.auto import modeling_auto as auto

    out = {}
    for mapping in (auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES):
        for model_type, name in mapping.items():
            out[model_type] = name if isinstance(name, str) else name[0]
    return sorted(out.items())


def check_model(model_type: str, class_name: str, coords: bool = True) -> dict[str, Any]:
    """Every check for one model type; `status` is "verified", "refused" (with the reason), "failed" (a check did
    not pass) or "skipped" (not a text model, or no tiny config builds)."""
    from hf_mup.architectures import generic

    generic.CHECKING.append(True)
    try:
        return _check_model(model_type, class_name, coords)
    finally:
        generic.CHECKING.pop()


def _check_model(model_type: str, class_name: str, coords: bool) -> dict[str, Any]:
    import transformers

    import hf_mup

    row: dict[str, Any] = {"model_type": model_type, "class": class_name}
    cls = getattr(transformers, class_name, None)
    causal = not is_masked_lm(class_name)
    try:
        config = tiny_config(model_type, 2 * BASE)
        if any(hasattr(config, k) for k in ("text_config", "vision_config", "audio_config")) \
                or getattr(config, "is_encoder_decoder", False) or cls is None:
            return {**row, "status": "skipped", "reason": "not a text-only decoder or encoder"}
        from hf_mup.plan import meta_model

        size = sum(p.numel() for p in meta_model(cls, config).parameters())
        if size > MAX_PARAMETERS:
            return {**row, "status": "skipped", "reason": f"the tiny config still has {size / 1e6:.0f}M parameters "
                    "(sizes this walk does not set)"}
        stock = stock_model(cls, config, 0)
        logits_of(stock, token_batch())
    except Exception as e:  # a model that will not build or run from a tiny config here: not checked
        return {**row, "status": "skipped", "reason": f"tiny model not built: {type(e).__name__}: {str(e)[:160]}"}
    row["moe"] = any(getattr(config, k, None) for k in MOE_FIELDS) and any(p.dim() == 3 for p in stock.parameters())
    try:
        mup_model(cls, config, 0)
    except hf_mup.MuPError as e:
        return {**row, "status": "refused", "reason": str(e)}
    except Exception as e:  # a bug of hf_mup's on this model: counted as failing
        return {**row, "status": "failed", "convert": {"ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}",
                                                       "where": traceback.format_exc()[-600:]}}
    checks = {"oracle": check_oracle, "init": check_init, "base_width": check_base_width}
    for name, check in checks.items():
        row[name] = _run(check, cls, config)
    row["fold"] = _run(check_fold, cls, config, causal)
    if isinstance(getattr(config, "tie_word_embeddings", None), bool):  # the other tying (a readout norm folded)
        tied = not config.tie_word_embeddings
        row["fold_tied" if tied else "fold_untied"] = _run(check_fold, cls, tiny_config(
            model_type, 2 * BASE, tie_word_embeddings=tied), causal)
    row["attention"] = _run(check_attention, cls, config)
    if coords:
        row["coord_check"] = _run(check_coords, model_type, cls)
    row["status"] = "verified" if all(row[k]["ok"] for k in CHECKS if k in row) else "failed"
    return row


def _run(check: Any, *args: Any) -> dict[str, Any]:
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            result: dict[str, Any] = check(*args)
            return result
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}", "where": traceback.format_exc()[-600:]}


def run(out: Path, only: Iterable[str] | None = None, coords: bool = True) -> list[dict[str, Any]]:
    """Check every model type (or `only` those), writing `zoo.json` (resumable: done types are kept) and
    `models.md` into `out`."""
    import transformers

    from ..logs import quiet_progress_bars

    quiet_progress_bars()
    transformers.logging.set_verbosity_error()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "zoo.json"
    done = {r["model_type"]: r for r in load_rows(path)[1]} if path.exists() else {}
    wanted = set(only) if only else None
    types = [(t, c) for t, c in model_types() if wanted is None or t in wanted]
    for i, (model_type, class_name) in enumerate(types):
        if model_type in done and wanted is None:
            continue
        start = time.perf_counter()
        row = check_model(model_type, class_name, coords)
        row["seconds"] = round(time.perf_counter() - start, 1)
        done[model_type] = row
        print(f"[{i + 1}/{len(types)}] {model_type}: {row['status']}"
              + (f" ({row.get('reason', '')[:120]})" if row["status"] != "verified" else "")
              + f"  {row['seconds']} s", flush=True)
        path.write_text(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__,
                                    "models": sorted(done.values(), key=lambda r: r["model_type"])}, indent=1))
    rows = sorted(done.values(), key=lambda r: r["model_type"])
    (out / "models.md").write_text(support_table(rows, transformers.__version__))
    (out / "verified.json").write_text(json.dumps(verified_list(rows, transformers.__version__), indent=1) + "\n")
    return rows


def verified_list(rows: list[dict[str, Any]], version: str) -> dict[str, Any]:
    """What the package ships as `hf_mup/architectures/verified.json`: verified and failing model types."""
    failing = {r["model_type"]: "; ".join(f"{k}: {r[k].get('error') or 'not ok'}" for k in CHECKS
                                          if k in r and not r[k]["ok"])[:300]
               for r in rows if r["status"] == "failed"}
    return {"transformers": version, "verified": [r["model_type"] for r in rows if r["status"] == "verified"],
            "failing": failing}


def load_rows(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """(transformers version, rows) of a walk's `zoo.json`."""
    data = json.loads(Path(path).read_text())
    return data["transformers"], sorted(data["models"], key=lambda r: r["model_type"])


def _cell(text: str, limit: int) -> str:
    """`text` as one Markdown table cell: one line, no column bar, at most `limit` characters."""
    return " ".join(text.split())[:limit].replace("|", "/")


def support_table(rows: list[dict[str, Any]], version: str) -> str:
    """The docs' supported-models page, generated from the walk's rows."""
    verified = [r for r in rows if r["status"] == "verified"]
    failed = [r for r in rows if r["status"] == "failed"]
    refused = [r for r in rows if r["status"] == "refused"]
    skipped = [r for r in rows if r["status"] == "skipped"]
    lines = [
        "# Supported models", "",
        f"Generated by `hf-mup zoo` with transformers {version} (do not edit: rerun it). Each model type is built "
        f"tiny (widths {', '.join(map(str, WIDTHS))}, base {BASE}, heads of {HEAD_DIM}, 2 layers) and checked: "
        "per-tensor LRs against microsoft/mup (Adam and SGD), the μP init, μP = stock at the base width (at init "
        "and after 2 Adam steps), `save_pretrained` → stock `AutoModelFor*` and `MuPModel.from_pretrained` logits "
        "and `generate()` tokens equal (embeddings tied and untied), with `attn_mult` 2 the attention modules' "
        "`scaling` read and folded (or refused where the scale is hard-coded), and a coordinate check (the log-log "
        f"slope of every layer's mean |output| and of the logits against width within {DEFAULT_BAND} after "
        f"{' and '.join(map(str, COORD_STEPS))} Adam steps, and of the token embeddings' share of the first hidden "
        "state at init, averaged over 2 seeds; the stock model's logits slope "
        "beside it).", "",
        f"**{len(verified)} verified** ({sum(bool(r.get('moe')) for r in verified)} mixture-of-experts), "
        f"{len(failed)} failing a check, {len(refused)} refused, {len(skipped)} not checked.", "",
        "## Verified", "",
        "| model type | class | MoE | worst μP slope | SP logits slope | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in verified:
        cc = r.get("coord_check", {})
        worst = f"{cc['slopes'][cc['worst']]:+.2f} ({cc['worst']})" if "slopes" in cc else "—"
        sp = f"{cc['sp_logits_slope']:+.2f}" if "sp_logits_slope" in cc else "—"
        lines.append(f"| {r['model_type']} | {r['class']} | {'yes' if r.get('moe') else ''} | {worst} | {sp} | "
                     f"{r.get('seconds', '')} |")
    if failed:
        lines += ["", "## Failing a check (hf_mup refuses them, naming the check)", "", "| model type | failing |",
                  "|---|---|"]
        for r in failed:
            bad = [f"{k}: {r[k].get('error') or {x: y for x, y in r[k].items() if x not in ('ok', 'where')}}"
                   for k in CHECKS if k in r and not r[k]["ok"]]
            lines.append(f"| {r['model_type']} | {_cell('; '.join(bad), 300)} |")
    lines += ["", "## Refused, with the reason", "", "| model type | reason |", "|---|---|"]
    lines += [f"| {r['model_type']} | {_cell(r['reason'], 400)} |" for r in refused]
    lines += ["", "## Not checked", "", "| model type | why |", "|---|---|"]
    lines += [f"| {r['model_type']} | {_cell(r['reason'], 200)} |" for r in skipped]
    return "\n".join(lines) + "\n"
