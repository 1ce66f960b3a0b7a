"""Start-up checks: everything that can be refused in seconds, before the model loads, with the fix named.

    python -m ranktuner_verl.integration.sft.checks loss=ranktuner model.path=... data.train_files=...   # checks only

``scripts/train.sh`` runs this once before torchrun starts its ranks, so a bad option or bad input is printed once
and last (the ranks then skip the slow checks: ``CHECKED_ENV``). The checks (``run_checks``):

- verl's own numeric options and ``data.truncation`` (``check_options``: verl reads them unchecked, so a negative batch
  size fails after the model loads and ``trainer.total_training_steps=-5`` trains one step);
- the loss options given on the command line belong to the loss chosen (``check_loss_overrides``);
- each data file is a readable parquet file with rows, the messages column (lists of turns, not JSON text) and
  non-empty responses;
- row counts against the batch size: a train file smaller than one batch runs no step, a validation file smaller than
  one batch validates nothing (verl drops the last partial batch in both);
- ``model.path`` exists (or is a hub id ``org/name``);
- the tokenizer and verl's ``MultiTurnSFTDataset`` on the first rows: a chat template that renders a turn differently
  alone than in the conversation (Qwen3 adds ``<think></think>`` to the last assistant turn only) stops here;
- ``data.max_length``: with ``truncation=error`` no conversation may be longer; with right truncation the examples
  whose prompt fills ``max_length`` keep no response token: they are counted, and all of them stops the run;
- ``model.use_fused_kernels`` with a loss that needs statistics, under a fused backend they cannot share
  (``WeightedSFTLoss.runs_fused``, ``fused_stats.unsupported_backend``: the "triton" backend);
- resuming under another loss configuration, from an incomplete checkpoint, or from a step that is gone
  (``checkpoint_guard.check_resume``);
- ``trainer.default_local_dir`` can be written and has room for one checkpoint, and no other run is using it
  (``run_guard``).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import sys

from omegaconf import DictConfig, OmegaConf

CHECKED_ENV = "RANKTUNER_VERL_CHECKED"  # "1": the checks ran before the ranks started (scripts/train.sh)
FIRST_ROWS = 4  # rows run through verl's dataset (template consistency)
EXPECTED_COLUMN_HELP = (
    "Each row needs a list of chat turns [{'role': 'system'|'user'|'assistant', 'content': str}, ...] with a "
    "non-empty assistant turn. Write such a file with `python -m ranktuner_verl.data.numina --out DIR` "
    "or ranktuner_verl.data.tiny.write_sft_parquet."
)
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
TRUNCATIONS = ("error", "left", "right")  # what verl's MultiTurnSFTDataset accepts (it asserts, with no message)
# verl's numeric options, which it reads unchecked: key -> (whole number?, smallest valid value, other valid values)
NUMERIC_OPTIONS = {
    "data.train_batch_size": (True, 1, ()),
    "data.micro_batch_size_per_gpu": (True, 1, ()),
    "data.max_token_len_per_gpu": (True, 1, ()),
    "data.max_length": (True, 1, ()),
    "data.num_workers": (True, 0, ()),
    "data.train_max_samples": (True, 1, (-1,)),
    "data.val_max_samples": (True, 1, (-1,)),
    "trainer.total_epochs": (True, 1, ()),
    "trainer.total_training_steps": (True, 1, (None,)),
    "trainer.save_freq": (True, 1, (-1,)),
    "trainer.test_freq": (True, 1, (-1,)),
    "trainer.max_ckpt_to_keep": (True, 1, (None,)),
    "trainer.seed": (True, 0, ()),
    "optim.lr": (False, 0, ()),
    "optim.weight_decay": (False, 0, ()),
    "optim.clip_grad": (False, 0, ()),
    "optim.lr_warmup_steps_ratio": (False, 0, ()),
    "optim.min_lr_ratio": (False, 0, ()),
}


class StartupError(ValueError):
    """A bad option or input found before the model loads; the message names the fix."""


def check_loss_overrides(argv: list[str]) -> None:
    """``loss.KEY=...`` on the command line must be an option of the loss chosen (Hydra would only say
    "Key 'KEY' is not in struct"). ``+loss.KEY`` is left to the method's own check."""
    from ranktuner_verl.methods import METHODS

    chosen = "sft"
    for arg in argv:
        if arg.startswith("loss="):
            chosen = arg.split("=", 1)[1]
    if chosen not in METHODS:
        return  # Hydra lists the valid losses
    options = METHODS[chosen].params
    for arg in argv:
        match = re.match(r"^loss\.(\w+)=", arg)
        if not match or match.group(1) == "name" or match.group(1) in options:
            continue
        key = match.group(1)
        owners = [name for name, spec in METHODS.items() if key in spec.params]
        where = f"{key} is an option of {', '.join(f'loss={name}' for name in owners)}" if owners else (
            f"no loss has an option {key}")
        mine = ", ".join(options) or "none"
        raise StartupError(f"{arg}: loss={chosen} has no option {key!r} ({where}). Options of loss={chosen}: {mine}.")


def run_checks(config: DictConfig, loss) -> None:
    """All the checks of the module docstring but the command line's (``loss`` is the built ``WeightedSFTLoss``)."""
    from ranktuner_verl.integration.sft import run_guard
    from ranktuner_verl.integration.sft.checkpoint_guard import check_resume

    check_options(config)
    if config.model.get("use_fused_kernels", False) and not loss.runs_fused:
        from ranktuner_verl.integration.fused_stats import unsupported_backend

        problem = unsupported_backend(True, config.model.get("fused_kernel_options"))
        if problem:
            raise StartupError(
                f"model.use_fused_kernels=True with loss={loss.method.name}: this loss needs "
                f"{sorted(loss.engine_stat_names)}, computed from the hidden states inside verl's fused LM head, but "
                f"{problem}.")
    rows = read_data(config)
    check_batch_sizes(config, {split: len(messages) for split, (_, messages) in rows.items()})
    check_model_path(config)
    check_tokenization(config, rows)
    try:
        check_resume(config)
        run_guard.check_folder(config)
    except ValueError as error:
        raise StartupError(str(error)) from None


def check_options(config: DictConfig) -> None:
    """``NUMERIC_OPTIONS`` hold numbers in their range (finite; whole where verl counts); ``data.truncation`` is one
    verl knows."""
    absent = object()
    for key, (whole, lowest, also_valid) in NUMERIC_OPTIONS.items():
        value = OmegaConf.select(config, key, default=absent)
        if value is absent or value in also_valid:
            continue
        number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if number is not None and math.isfinite(number) and number >= lowest and (not whole or number == int(number)):
            continue
        valid = f"{'a whole number' if whole else 'a finite number'} of at least {lowest}"
        valid += "".join(f" or {'null' if v is None else v}" for v in also_valid)
        raise StartupError(f"{key}={value}: it must be {valid}. Set {key} to such a value (or leave it out: verl's "
                           "default).")
    truncation = config.data.get("truncation", "error")
    if truncation not in TRUNCATIONS:
        raise StartupError(f"data.truncation={truncation}: verl truncates a conversation longer than data.max_length "
                           f"only with {', '.join(TRUNCATIONS[:-1])} or {TRUNCATIONS[-1]}. Set data.truncation to one "
                           "of them.")


def check_model_path(config: DictConfig) -> None:
    """A local model path must exist and hold a Hugging Face model; a hub id ``org/name`` is left to the hub."""
    for key in ("path", "tokenizer_path"):
        value = config.model.get(key, None)
        if value is None or "://" in str(value):
            continue
        local = os.path.expanduser(str(value))
        if os.path.isdir(local):
            if key == "path" and not os.path.isfile(os.path.join(local, "config.json")):
                raise StartupError(f"model.path={value}: {local} holds no config.json; give a Hugging Face model "
                                   "directory (a verl checkpoint global_step_N must be merged first: "
                                   "python -m verl.model_merger merge --backend fsdp ...)")
            continue
        looks_local = (not HUB_ID.match(str(value)) or str(value).startswith((".", "~"))
                       or os.path.isdir(str(value).split("/")[0]))
        if looks_local:
            raise StartupError(f"model.{key}={value}: {os.path.abspath(local)} does not exist (and it is not a "
                               "Hugging Face hub id org/name). Fix the path; a relative path is read from the "
                               f"directory the trainer starts in, {os.getcwd()}.")


def data_files(config: DictConfig, split: str) -> list[str]:
    files = config.data.get(split)
    if not files:
        return []
    return [os.path.expanduser(str(path)) for path in ([files] if isinstance(files, str) else list(files))]


def read_data(config: DictConfig) -> dict[str, tuple[list[str], list]]:
    """split -> (files, messages of every row, after train/val_max_samples); refuses unreadable or empty-response
    files. A user dataset class (``data.custom_cls``) reads its own schema: nothing is read."""
    if config.data.custom_cls.get("path", None):
        return {}
    import pyarrow.parquet as pq

    key = config.data.messages_key
    rows = {}
    for split, limit_key in (("train_files", "train_max_samples"), ("val_files", "val_max_samples")):
        files, messages = data_files(config, split), []
        for path in files:
            if not os.path.exists(path):
                raise StartupError(f"data.{split}: {path} does not exist. {EXPECTED_COLUMN_HELP}")
            try:
                schema_names = pq.read_schema(path).names
                column = pq.read_table(path, columns=[key]).column(key).to_pylist() if key in schema_names else None
            except Exception as error:  # pyarrow's errors do not name the file
                raise StartupError(f"data.{split}: {path} is not a readable parquet file ({error}). Rewrite it, "
                                   "e.g. with pandas.DataFrame.to_parquet.") from None
            if column is None:
                raise StartupError(f"data.{split}: {path} has columns {schema_names} but no {key!r} column "
                                   f"(data.messages_key). {EXPECTED_COLUMN_HELP}")
            if not column:
                raise StartupError(f"data.{split}: {path} has no rows. Point data.{split} at a file with "
                                   f"conversations. {EXPECTED_COLUMN_HELP}")
            for row, turns in enumerate(column):
                if isinstance(turns, str) or not all(isinstance(turn, dict) for turn in turns or []):
                    raise StartupError(
                        f"data.{split}: {path} row {row}: the {key!r} column holds {type(turns).__name__} values "
                        f"(JSON text?), not lists of turns, e.g. {str(turns)[:80]!r}. Store the turns as a list "
                        f"column (for JSON text: df[{key!r}] = df[{key!r}].map(json.loads), then df.to_parquet). "
                        f"{EXPECTED_COLUMN_HELP}")
                responses = [turn.get("content") for turn in turns or [] if turn.get("role") == "assistant"]
                if not responses or any(not (text or "").strip() for text in responses):
                    raise StartupError(
                        f"data.{split}: {path} row {row} has an empty or missing assistant response: there is "
                        f"nothing to train on. Drop the row or fill the response. {EXPECTED_COLUMN_HELP}")
            messages += [(path, row, turns) for row, turns in enumerate(column)]
        limit = int(config.data.get(limit_key, -1) or -1)
        if files:
            rows[split] = (files, messages[:limit] if 0 < limit < len(messages) else messages)
    return rows


def check_batch_sizes(config: DictConfig, counts: dict[str, int]) -> None:
    """verl batches both splits by ``data.train_batch_size`` and drops the last partial batch."""
    batch = int(config.data.train_batch_size)
    train, val = counts.get("train_files"), counts.get("val_files")
    if train is not None and train < batch:
        raise StartupError(
            f"data.train_files has {train} rows, fewer than one batch (data.train_batch_size={batch}): no step "
            f"would run. Set data.train_batch_size to at most {train} (e.g. data.train_batch_size={train}).")
    if val is not None and val < batch:
        raise StartupError(
            f"data.val_files has {val} rows, fewer than one batch (data.train_batch_size={batch}; verl validates in "
            f"batches of the training batch size and drops the last partial one): val/loss would be nan. Use a "
            f"validation file of at least {batch} rows, lower data.train_batch_size, or drop data.val_files.")


def check_tokenization(config: DictConfig, rows: dict) -> None:
    """verl's dataset on the first rows of each split, then every row's length against ``data.max_length``."""
    if not rows:
        return
    from verl.utils import hf_tokenizer
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    source = config.model.get("tokenizer_path", None) or config.model.path
    tokenizer = hf_tokenizer(os.path.expanduser(str(source)), trust_remote_code=config.model.get("trust_remote_code",
                                                                                                 False))
    for split, (files, messages) in rows.items():
        with contextlib.redirect_stdout(io.StringIO()):  # its "dataset len", "selected N random samples" lines
            dataset = MultiTurnSFTDataset(list(files), tokenizer, config.data, max_samples=FIRST_ROWS)
        for index in range(len(dataset)):
            try:
                dataset[index]
            except AssertionError as error:
                if "ignore_input_ids_mismatch" not in str(error):
                    raise
                path, row, _ = messages[index]
                raise StartupError(
                    f"data.{split}: {path} row {row}: the chat template renders a turn differently alone than inside "
                    "the conversation (Qwen3-style templates add <think></think> to the last assistant turn only), "
                    "and verl's dataset tokenises turn by turn. Add data.ignore_input_ids_mismatch=True to train on "
                    "the turn-by-turn tokens (the examples/qwen3_8b_numina10k.sh preset does).") from None
            except ValueError as error:
                if "max_length" not in str(error):
                    raise
        count_truncated(config, split, messages, tokenizer)


def count_truncated(config: DictConfig, split: str, messages: list, tokenizer) -> None:
    """Lengths from the rendered chat (``apply_chat_template``): the whole conversation, and the prompt up to the
    first response token. Too long under ``truncation=error`` is refused (file, row, fix); under right truncation
    (verl's no_padding mode cuts on the right unless ``error``) prompts of ``max_length`` tokens or more leave their
    example no response token: counted, and refused when that is every example."""
    max_length, truncation = int(config.data.max_length), config.data.get("truncation", "error")
    cuts_right = truncation == "right" or (config.data.get("pad_mode") == "no_padding" and truncation != "error")
    if truncation != "error" and not cuts_right:
        return
    kwargs = dict(config.data.get("apply_chat_template_kwargs", None) or {})
    conversations = [turns for _, _, turns in messages]
    if truncation == "error":
        lengths = _token_counts(tokenizer, conversations, False, kwargs)
        too_long = [(messages[i][0], messages[i][1], n) for i, n in enumerate(lengths) if n > max_length]
        if too_long:
            path, row, n = too_long[0]
            raise StartupError(
                f"data.{split}: {len(too_long)} of {len(lengths)} conversations are longer than data.max_length="
                f"{max_length} tokens, the first {path} row {row} ({n} tokens), and data.truncation=error. Raise "
                f"data.max_length to at least {max(n for *_, n in too_long)}, or set data.truncation=right (or left).")
        return
    prompts = [turns[:next(i for i, t in enumerate(turns) if t.get("role") == "assistant")] for turns in conversations]
    lengths = _token_counts(tokenizer, prompts, True, kwargs)
    empty = [i for i, n in enumerate(lengths) if n >= max_length]
    if not empty:
        return
    path, row, _ = messages[empty[0]]
    what = (f"data.{split}: {len(empty)} of {len(lengths)} examples keep no response token after right truncation "
            f"to data.max_length={max_length} (the prompt alone fills it; the first: {path} row {row}, "
            f"{lengths[empty[0]]} prompt tokens)")
    fix = f"Raise data.max_length above {max(lengths[i] for i in empty)} or drop those rows"
    if len(empty) == len(lengths):
        raise StartupError(f"{what}: there is nothing to train on. {fix}.")
    print(f"WARNING: {what}; they train on nothing. {fix}.", file=sys.stderr, flush=True)


def prepare(config: DictConfig, for_workers: bool = False):
    """Everything that can fail before the model loads: the plugin (``for_workers``: also in Ray workers), the loss
    and its parameters, then the start-up checks (``run_checks``). Under torchrun only rank 0 checks (one
    message, not one per rank); none does when ``scripts/train.sh`` checked before starting the ranks. Returns the
    ``WeightedSFTLoss``."""
    from ranktuner_verl.integration import activation
    from ranktuner_verl.integration.sft.config import build_loss

    activation.require(for_workers)
    loss = build_loss(config)
    if os.environ.get("RANK", "0") == "0" and os.environ.get(CHECKED_ENV) != "1":
        run_checks(config, loss)
    return loss


def _token_counts(tokenizer, conversations: list, generation_prompt: bool, kwargs: dict) -> list[int]:
    texts = [tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt, **kwargs)
             for turns in conversations]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def main(argv: list[str] | None = None) -> int:
    """Compose the trainer's config from ``argv`` (Hydra overrides) and run every check; print the problem last
    (no notice before it: ``run_log``)."""
    from ranktuner_verl.integration import run_log

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    run_log.no_notices_here()  # before the plugin loads verl
    run_log.quiet_verl_engine_warnings()
    from ranktuner_verl.integration import plugin  # noqa: F401  (installs the hooks, as the trainers do)
    from ranktuner_verl.integration.sft.config import compose_config

    try:
        check_loss_overrides(argv)
        prepare(compose_config(argv))
    except Exception as error:  # Hydra's and ours: one line, last
        print(f"error: {error or repr(error)}", file=sys.stderr)
        return 2
    print("start-up checks passed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
