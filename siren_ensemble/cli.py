"""Command line: parses arguments and prints; the work happens in the library."""

from __future__ import annotations

import json
import sys

import click

from .config import check_workers
from .conversation import JUDGES
from .data import defaults as data_defaults
from .default_ensemble import DEFAULT_CONFIG
from .errors import SirenError
from .ranking.result import REQUESTED_METHODS
from .serve.settings import API_KEY_ENV, ServeSettings

EXIT_HARMFUL = 1
EXIT_ERROR = 2


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SirenError as error:
            click.echo(f"Error: {error}", err=True)
            ctx.exit(EXIT_ERROR)


@click.group(cls=_Group)
@click.version_option(package_name="siren-ensemble")
def cli():
    """Score text for harm with an ensemble of SIREN guards on frozen LLMs."""


config_option = click.option(
    "--config", "config_path", default=str(DEFAULT_CONFIG), show_default="the packaged default ensemble",
    type=click.Path(dir_okay=False), help="Ensemble YAML config.",
)


class _Workers(click.ParamType):
    """``N`` Ray workers, or ``MIN-MAX`` for a pool Ray grows and shrinks."""

    name = "N|MIN-MAX"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        low, _, high = value.partition("-")
        try:
            workers = int(low) if not high else (int(low), int(high))
        except ValueError:
            self.fail(f"expected a number (2) or a range (1-4), got {value!r}", param, ctx)
        try:
            return check_workers(workers)  # the config's rule, so a flag and a ray section accept the same values
        except ValueError:
            self.fail(f"expected at least 1, and MIN <= MAX, got {value!r}", param, ctx)


engine_option = click.option(
    "--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
    help="ray: run on Ray (pip install 'siren-ensemble[ray]'), on a local instance or the cluster at --address.",
)
address_option = click.option("--address", help="--engine ray: the cluster (ray://host:10001, host:6379 or auto); default: a local instance.")
num_cpus_option = click.option("--num-cpus", type=click.FloatRange(0, min_open=True), help="--engine ray: CPUs per worker (default: the config's ray section, 1).")
num_gpus_option = click.option("--num-gpus", type=click.FloatRange(0), help="--engine ray: GPUs per worker (default: the config's ray section, 0).")


def _given(ctx: click.Context, names: list[str]) -> list[str]:
    """The options among ``names`` (parameter names) given on the command line, as their flags."""
    flags = {param.name: param.opts[0] for param in ctx.command.params}
    return [flags[name] for name in names if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]


def _refuse(ctx: click.Context, names: list[str], reason: str) -> None:
    given = _given(ctx, names)
    if given:
        raise SirenError(f"{', '.join(given)}: {reason}")


def _ray_modules(what: str):
    """The ``siren_ensemble.ray`` package, or a one-line error naming the extra."""
    try:
        import siren_ensemble.ray.cluster  # noqa: F401  (ray itself, and the modules that import it)
    except ImportError as error:
        raise SirenError(f"{what} needs the `ray` extra: pip install 'siren-ensemble[ray]' ({error})") from None
    import siren_ensemble.ray as ray_package

    return ray_package


def _with_flags(section, **flags):
    """A config's ray section with the flags given on the command line in place of its values."""
    return type(section).model_validate(section.model_dump() | {name: value for name, value in flags.items() if value is not None})


_RAY_SCORE_OPTIONS = ["output_path", "output_file_format", "address", "concurrency", "batch_size", "num_cpus", "num_gpus"]
_RAY_SERVE_OPTIONS = ["address", "replicas", "num_cpus", "num_gpus"]
#: Guards of uvicorn's protocol in one process; on Ray, Serve's proxy holds the connections.
_LOCAL_SERVER_OPTIONS = ["header_timeout", "body_timeout", "max_connections"]


@cli.command()
@config_option
@click.argument("texts", nargs=-1)
@click.option("--input", "input_path", help="File of inputs: .txt (one per line), .jsonl (`text`, `prompt`/`response` or chat "
              "`messages`, optional `id`), or - for stdin.")
@click.option("--prompt", help="Prompt of a prompt/response pair.")
@click.option("--response", help="Response of a prompt/response pair.")
@click.option("--threshold", type=click.FloatRange(0, 1), help="Override the ensemble's decision threshold.")
@click.option("--format", "output_format", type=click.Choice(["jsonl", "table"]), default="jsonl", show_default=True)
@click.option("--fail-on-harmful", is_flag=True, help="Exit with status 1 when any input is harmful.")
@click.option("--verbose", "-v", is_flag=True, help="Report on stderr each member's dtype (and why) once the models are loaded.")
@click.option("--window", type=click.IntRange(0), help="Chat `messages`: turns before the judged ones read as context "
              "(default: the config's conversation.window).")
@click.option("--judge", type=click.Choice(JUDGES),
              help="Chat `messages`: either (in context and the last turns alone, the higher score), context or "
              "last_turns (default: the config's conversation.judge).")
@engine_option
@click.option("--output", "output_path", help="--engine ray: the directory to write the scores into (any path Ray reads: s3://...).")
@click.option("--output-format", "output_file_format", type=click.Choice(["parquet", "jsonl"]),
              help="--engine ray: default from --output's name (.jsonl, .parquet), else parquet.")
@address_option
@click.option("--concurrency", type=_Workers(), help="--engine ray: actors, each loading the ensemble once: N, or MIN-MAX to autoscale (default: the config's ray.data, 1).")
@click.option("--batch-size", type=click.IntRange(1), help="--engine ray: rows per call of an actor (default: the config's ray.data, 64).")
@num_cpus_option
@num_gpus_option
@click.pass_context
def score(ctx, config_path, texts, input_path, prompt, response, threshold, output_format, fail_on_harmful, verbose, window,
          judge, engine, output_path, output_file_format, address, concurrency, batch_size, num_cpus, num_gpus):
    """Score TEXTS, an --input file, or one --prompt/--response pair.

    With --engine ray, score a corpus: --input is JSONL or Parquet (a file, a directory, or a URI such as
    s3://bucket/corpus/), and the scores go to --output with each row's `id`; a summary is printed at the end."""
    if engine == "ray":
        _refuse(ctx, ["output_format", "verbose"], "not with --engine ray (it writes --output; the summary says how it went)")
        _refuse(ctx, ["judge"], "not with --engine ray (set conversation.judge in the config)")
        if texts or prompt is not None or response is not None or input_path in (None, "-") or output_path is None:
            raise SirenError("--engine ray scores a corpus: give --input DATA (JSONL or Parquet: a file, a directory or a URI) "
                             "and --output DIR")
        _score_on_ray(config_path, input_path, output_path, output_file_format, threshold, window, fail_on_harmful, address,
                      dict(concurrency=concurrency, batch_size=batch_size, num_cpus=num_cpus, num_gpus=num_gpus))
        return
    _refuse(ctx, _RAY_SCORE_OPTIONS, "only with --engine ray")
    from .ensemble import Ensemble
    from .input_kinds import PromptResponse
    from .inputs import InputRecord, read_inputs

    sources = sum([bool(texts), input_path is not None, prompt is not None or response is not None])
    if sources != 1:
        raise SirenError("give exactly one input: TEXT arguments, --input FILE, or --prompt/--response")
    if input_path is not None:
        records = read_inputs(input_path)
    elif texts:
        records = [InputRecord(text=text) for text in texts]
    else:
        pair = PromptResponse(prompt, response)
        records = [InputRecord(text=pair.text, pair=pair)]

    ensemble = Ensemble.from_config(config_path)
    if verbose:
        for name, choice in ensemble.precision.items():
            click.echo(f"{name}: dtype {choice.describe()}", err=True)
        for name, support in ensemble.stream_support().items():
            click.echo(f"{name}: stream {support.describe()}", err=True)
    inputs = [ensemble.conversation_input(record.conversation, window, judge) if record.conversation else record.scored
              for record in records]
    results = ensemble.score_batch(inputs, threshold=threshold, progress=sys.stderr.isatty())
    rows = [_output_row(record, result) for record, result in zip(records, results)]
    if output_format == "table":
        _print_table(rows, records, ensemble.member_names)
    else:
        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=False, allow_nan=False))  # strict JSON: the decision path never yields NaN
    if fail_on_harmful and any(result.is_harmful for result in results):
        sys.exit(EXIT_HARMFUL)


def _score_on_ray(config_path, input_path, output_path, output_format, threshold, window, fail_on_harmful, address,
                  flags) -> None:
    from .config import load_config

    ray_package = _ray_modules("score --engine ray")
    from siren_ensemble.ray.corpus import CorpusJob, score_corpus

    config = load_config(config_path)
    options = _with_flags(config.ray.data, **flags)
    with ray_package.cluster.ray_session(address):
        summary = score_corpus(config, CorpusJob(input_path, output_path, output_format, threshold, window), options)
    for line in summary.lines():
        click.echo(line)
    if fail_on_harmful and summary.flagged:
        sys.exit(EXIT_HARMFUL)


def _output_row(record, result) -> dict:
    row = {}
    if record.id is not None:
        row["id"] = record.id
    if record.line is not None:
        row["line"] = record.line
    row.update(result.to_dict())
    return row


def _print_table(rows, records, member_names) -> None:
    staged = any("decided_by" in row for row in rows)
    categorised = any("top_category" in row for row in rows)
    unvalidated = any(row.get("unvalidated_language") for row in rows)
    header = ["#", "score", "harmful", *(["stage"] if staged else []), *(["category"] if categorised else []),
              *(["language"] if unvalidated else []), *member_names, "text"]
    lines = []
    for index, (row, record) in enumerate(zip(rows, records)):
        label = row.get("id", row.get("line", index + 1))
        # A cascade member that did not run (its text was decided earlier) has no score and no error.
        member_cells = [
            f"{row['members'][name]:.4f}" if row["members"][name] is not None else
            "failed" if name in row.get("errors", {}) else "-"
            for name in member_names
        ]
        stage_cell = [str(row.get("decided_by", "-"))] if staged else []
        stage_cell += [row.get("top_category") or "-"] if categorised else []
        # The language column appears when a text is in an unvalidated one: it says why such a text is flagged.
        stage_cell += [f"{row['language']} (unvalidated)" if row.get("unvalidated_language") else row.get("language") or "-"] \
            if unvalidated else []
        # backslashreplace: a lone surrogate (scored as a per-text error) cannot be printed as it is
        preview = " ".join(record.text.split()).encode("utf-8", "backslashreplace").decode("utf-8")
        preview = preview if len(preview) <= 48 else preview[:45] + "..."
        lines.append([str(label), f"{row['score']:.4f}", "yes" if row["is_harmful"] else "no", *stage_cell, *member_cells, preview])
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    for cells in [header, *lines]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip())


@cli.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_plugins(as_json):
    """List the backbones and combiners available, with the plugin that provided each."""
    from . import plugins

    listing = {
        kind: [
            {"name": entry.name, "aliases": list(entry.aliases), "plugin": entry.plugin, "description": entry.cls.description}
            for entry in registry
        ]
        for kind, registry in (("backbones", plugins.backbones()), ("combiners", plugins.combiners()))
    }
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    for kind, entries in listing.items():
        click.echo(f"{kind}:")
        for entry in entries:
            aliases = f" (aliases: {', '.join(entry['aliases'])})" if entry["aliases"] else ""
            click.echo(f"  {entry['name']}{aliases}  [{entry['plugin']}]  {entry['description']}")


@cli.command()
@config_option
def validate(config_path):
    """Check a config, its heads and its backbones' configs without loading weights, scoring or running repository code."""
    from .config import load_config
    from .routing import Routes
    from .members import describe_plan, describe_streams_before_loading, validate_plan

    config = load_config(config_path)
    plans, _combiner = validate_plan(config, remote_code=False)
    Routes.from_config(config, plans)  # every route's threshold, calibration file and cascade bands against both
    click.echo(f"{config_path}: OK")
    click.echo(describe_plan(config, plans))
    for line in describe_streams_before_loading(plans):
        click.echo(line)
    for plan in plans:
        if plan.spec.trust_remote_code:
            click.echo(f"  {plan.name}: backbone config not read (trust_remote_code: validate runs no repository code)")


@cli.command(name="fit-stacker")
@config_option
@click.option("--data", "data_path", required=True, type=click.Path(file_okay=False),
              help="A split directory: fitted on cross-fitted member scores over its train and validation splits.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Where to write the parameters (.json or .safetensors).")
@click.option("--target-recall", type=click.FloatRange(0, 1, min_open=True),
              help="Store the threshold reaching this recall on the stacker's out-of-fold predictions of validation.")
@click.option("--interactions", is_flag=True, help="Add the pairwise products of member logits as features.")
@click.option("--folds", type=click.IntRange(2), default=3, show_default=True, help="Cross-fitting folds.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Feature cache directory.")
def fit_stacker_command(config_path, data_path, out_path, target_recall, interactions, folds, cache_dir):
    """Fit the stacking combiner on cross-fitted (out-of-fold) member scores over train + validation (never test)."""
    from .evaluation.crossfit import fit_stacker_on_split

    _log_progress_to_stderr()
    params, report = fit_stacker_on_split(config_path, data_path, target_recall, interactions, folds, cache_dir=cache_dir,
                                          progress=sys.stderr.isatty())
    params.save(out_path)
    click.echo(json.dumps({"out": out_path, "members": list(params.members), "coefficients": list(params.coefficients),
                           "intercept": params.intercept, "interactions": [list(pair) for pair in params.interactions],
                           **report}))


def _log_progress_to_stderr() -> None:
    """Stage messages of long jobs (train, evaluate) on stderr, where progress bars are absent (not a terminal)."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("siren_ensemble").setLevel(logging.INFO)


def _one_or_parts(models: tuple[str, ...]) -> str | list[str] | None:
    if not models:
        return None
    return models[0] if len(models) == 1 else list(models)


def _parse_layers(value: str | None) -> tuple[int, ...] | None:
    """``--layers 4-20`` or ``--layers 3,5,7`` (or both, comma-separated)."""
    if value is None or value == "all":
        return None
    layers: set[int] = set()
    try:
        for part in value.split(","):
            low, _, high = part.strip().partition("-")
            layers.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise SirenError(f"--layers: expected e.g. 4-20 or 3,5,7, got {value!r}") from None
    return tuple(sorted(layers))


@cli.command()
@click.option("--backbone", help="Backbone adapter name (see `siren-ensemble plugins`).")
@click.option("--model", multiple=True,
              help="Hub id, local directory, GGUF file or pkg: file of the backbone; repeat for GGUF parts to concatenate.")
@click.option("--gguf-file", help="GGUF file: a name inside --model, or a path when --model is omitted.")
@click.option("--sha256", help="Pinned sha256 of the GGUF file (of the parts, concatenated); a mismatch refuses to load.")
@click.option("--revision", help="Pinned hub revision of the backbone.")
@click.option("--member", help="Train for this member of --config: its backbone, model, sha256, revision and dtype.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="With --member: the ensemble config.")
@click.option("--data", "data_path", required=True, type=click.Path(file_okay=False), help="Split directory (`siren-ensemble data build`).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Head directory to write.")
@click.option("--eta", type=click.FloatRange(0, 1, min_open=True), default=0.9, show_default=True, help="Share of |probe weight| the safety neurons cover.")
@click.option("--trials", type=click.IntRange(1), default=32, show_default=True, help="Optuna trials for the MLP search.")
@click.option("--folds", type=click.IntRange(2), default=3, show_default=True, help="Cross-validation folds of the MLP search.")
@click.option("--layers", "layers_text", help="Layers to probe, e.g. 4-20 or 3,5,7 (default: all).")
@click.option("--max-layer", type=click.IntRange(0),
              help="Probe only layers 0-K (numbered as --layers): the head's forward pass stops after block K.")
@click.option("--depth-budget", type=click.FloatRange(0, 1, min_open=True),
              help="Instead of --max-layer: keep this share of the blocks, layers 0 to ceil(F x depth) - 1 (0.6 of 30: 0-17).")
@click.option("--max-length", type=click.IntRange(1), default=512, show_default=True, help="Tokens read per text (longer texts are truncated).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
              help="auto: bfloat16 on a CPU with native bf16 or a bf16 GPU, else float32 (default: float32; with --member, the member's dtype).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True, help="Processes fitting the stage-1 layer probes side by side (same result).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Feature cache (default: $SIREN_ENSEMBLE_CACHE or ~/.cache/siren-ensemble).")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False), help="Write the per-layer probe F1 plot here.")
@click.option("--categories", "with_categories", is_flag=True,
              help="Also train a category head on the same features (categories.json + categories.safetensors beside the head).")
def train(backbone, model, gguf_file, sha256, revision, member, config_path, data_path, out_dir, eta, trials, folds, layers_text,
          max_layer, depth_budget, max_length, device, dtype, seed, jobs, cache_dir, plots_dir, with_categories):
    """Train a SIREN head (layer probes, safety neurons, MLP search) on a split directory."""
    from pathlib import Path

    from .members import adapter_for
    from .training.feature_cache import FeatureExtractor
    from .training.pipeline import SUMMARY_FILE, TrainOptions, train_head

    _log_progress_to_stderr()
    options = TrainOptions(eta=eta, trials=trials, folds=folds, layers=_parse_layers(layers_text), seed=seed, jobs=jobs,
                           max_layer=max_layer, depth_budget=depth_budget)

    if member:
        if backbone or model or gguf_file or sha256 or revision:
            raise SirenError("--member takes the backbone from the config; leave out --backbone/--model/--gguf-file/--sha256/--revision")
        from .config import load_config
        from .members import adapter_of_member

        adapter = adapter_of_member(load_config(config_path or DEFAULT_CONFIG), member, dtype=dtype)
    elif not backbone:
        raise SirenError("--backbone: required (or --member NAME [--config FILE] to train for a config's member)")
    else:
        adapter = adapter_for(backbone, _one_or_parts(model), gguf_file, revision, dtype or "float32", device, sha256=sha256)
    extractor = FeatureExtractor(adapter, max_length=max_length, cache_dir=cache_dir)
    report = train_head(extractor, data_path, out_dir, options, progress=sys.stderr.isatty())
    if plots_dir:
        from .evaluation.plots import layer_f1

        layer_f1({Path(out_dir).name: report}, Path(plots_dir) / "layer_f1.png")
    click.echo((Path(out_dir) / SUMMARY_FILE).read_text().rstrip())
    if with_categories:
        from .training.categories import CategoryTrainOptions, summarise_categories, train_category_head

        # The features train just read or extracted: from the cache.
        category_report = train_category_head(extractor, data_path, out_dir, CategoryTrainOptions(seed=seed),
                                              progress=sys.stderr.isatty())
        click.echo(summarise_categories(category_report))


@cli.command(name="train-categories")
@click.option("--member", required=True, help="The member of --config whose head gets a category head.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="The ensemble config (default: the packaged default).")
@click.option("--data", "data_path", required=True, type=click.Path(file_okay=False), help="Split directory with `categories` on its records.")
@click.option("--head", "head_dir", type=click.Path(file_okay=False),
              help="The SIREN head directory to read and write the category head into (default: the member's head).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
              help="Dtype of the features (default: the one in the head's training_report.json, which names the cached features; else the member's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--min-examples", type=click.IntRange(1), default=10, show_default=True,
              help="A category needs this many harmful train records to get an output.")
@click.option("--cached-only", is_flag=True, help="Fail rather than run the backbone when the features are not cached.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Feature cache directory.")
def train_categories(member, config_path, data_path, head_dir, dtype, seed, min_examples, cached_only, cache_dir):
    """Add a category head to an existing SIREN head, leaving the head itself untouched (features from the cache)."""
    from pathlib import Path

    from .config import load_config
    from .head import SirenHead
    from .members import adapter_of_member, member_head_directory, member_named
    from .training.categories import CategoryTrainOptions, summarise_categories, train_category_head
    from .training.feature_cache import FeatureExtractor
    from .training.pipeline import REPORT_FILE

    _log_progress_to_stderr()
    config = load_config(config_path or DEFAULT_CONFIG)
    directory = Path(head_dir) if head_dir else member_head_directory(member_named(config, member), config.base_dir)
    head = SirenHead.load(directory)
    report_path = directory / REPORT_FILE
    if dtype is None and report_path.is_file():
        dtype = json.loads(report_path.read_text())["backbone"]["dtype"]
    adapter = adapter_of_member(config, member, dtype=dtype)
    extractor = FeatureExtractor(adapter, max_length=head.max_length, pooling=head.config.pooling, cache_dir=cache_dir)
    report = train_category_head(extractor, data_path, directory, CategoryTrainOptions(seed=seed, min_train_examples=min_examples),
                                 progress=sys.stderr.isatty(), cached_only=cached_only)
    click.echo(f"{directory}: wrote categories.json, categories.safetensors, categories_report.json")
    click.echo(summarise_categories(report))


@cli.command()
@config_option
@click.option("--member", required=True, help="The member of --config whose backbone is analysed (its head need not exist).")
@click.option("--data", "data_path", required=True, type=click.Path(file_okay=False), help="Split directory: probes fit on train, score on validation.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory for layers.json and layers.png.")
@click.option("--max-length", type=click.IntRange(1), default=512, show_default=True, help="Tokens read per text (as train; shares its feature cache).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), help="Default: the member's dtype.")
@click.option("--tolerance", type=click.FloatRange(0, 1), default=0.005, show_default=True,
              help="A probe this close to the best probe's F1 counts as good as the best (for the recommended cut).")
@click.option("--center", is_flag=True, help="Subtract each layer's mean state before the cosines.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True, help="Processes fitting the layer probes side by side (same result).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Feature cache directory.")
def layers(config_path, member, data_path, out_dir, max_length, dtype, tolerance, center, seed, jobs, cache_dir):
    """Per layer: probe F1 and the benign/harmful cosine gap ("Safety Layers"), and a recommended depth cut."""
    from .config import load_config
    from .evaluation.layers import LayerOptions, analyse_layers, summarise, write_report
    from .members import adapter_of_member
    from .training.feature_cache import FeatureExtractor

    _log_progress_to_stderr()
    adapter = adapter_of_member(load_config(config_path), member, dtype=dtype)
    options = LayerOptions(seed=seed, jobs=jobs, tolerance=tolerance, center=center)
    report = analyse_layers(FeatureExtractor(adapter, max_length=max_length, cache_dir=cache_dir), data_path, options,
                            progress=sys.stderr.isatty())
    written = write_report(report, out_dir)
    click.echo(summarise(report))
    click.echo(f"wrote {', '.join(str(path) for path in written)}")


@cli.command()
@config_option
@click.option("--data", "data_path", required=True, help="Split directory (scores --split; train/validation feed baselines and thresholds) or a labelled JSONL file.")
@click.option("--split", type=click.Choice(["test", "validation", "train"]), default="test", show_default=True)
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="Write the full report as JSON here.")
@click.option("--target-recall", type=click.FloatRange(0, 1, min_open=True), help="Choose every scorer's threshold on validation for this recall (default: configured thresholds).")
@click.option("--no-baselines", is_flag=True, help="Skip the last-layer probe and TF-IDF baselines.")
@click.option("--no-loso", is_flag=True, help="Skip the leave-one-source-out table.")
@click.option("--no-stackers", is_flag=True, help="Skip the stackers fitted on cross-fitted member scores (they refit each member's MLP per fold).")
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True, help="Processes for the leave-one-source-out rows (same table).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Feature cache directory.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False), help="Write ROC, PR and per-layer F1 plots (PNG) here.")
@click.option("--examples", type=click.IntRange(0), default=0, show_default=True,
              help="Show this many misclassified records per source and kind (missed harmful, flagged benign).")
def evaluate(config_path, data_path, split, out_path, target_recall, no_baselines, no_loso, no_stackers, jobs, cache_dir, plots_dir, examples):
    """Metrics of every member, every combiner and the baselines, per source, plus leave-one-source-out."""
    from pathlib import Path

    from .evaluation.evaluate import EvaluateOptions, evaluate as run_evaluation
    from .evaluation.tables import render

    _log_progress_to_stderr()
    options = EvaluateOptions(split=split, target_recall=target_recall, baselines=not no_baselines, leave_one_source_out=not no_loso,
                              stackers=not no_stackers, examples=examples, jobs=jobs)
    report = run_evaluation(config_path, data_path, options, cache_dir, progress=sys.stderr.isatty(), plots_dir=plots_dir)
    if out_path:
        Path(out_path).write_text(json.dumps(report, indent=2) + "\n")
    click.echo(render(report).rstrip())


@cli.command(name="evaluate-conversations")
@config_option
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Conversations JSONL (`siren-ensemble data conversations`).")
@click.option("--window", type=click.IntRange(0), help="Turns of context (default: the config's conversation.window).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="Write the full report as JSON here.")
def evaluate_conversations_command(config_path, data_path, window, out_path):
    """Recall and FPR of conversations judged in context, by their last turns alone, and by either (runs the backbones)."""
    from pathlib import Path

    from .evaluation.conversations import conversation_table, evaluate_conversations

    _log_progress_to_stderr()
    report = evaluate_conversations(config_path, data_path, window, progress=sys.stderr.isatty())
    if out_path:
        Path(out_path).write_text(json.dumps(report, indent=2) + "\n")
    click.echo(conversation_table(report))


@cli.command()
@config_option
@click.option("--data", "data_path", required=True, help="Split directory (its validation split is used) or a labelled JSONL file.")
@click.option("--target-recall", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True)
@click.option("--per-source", is_flag=True, help="Every source with enough harmful records must reach the target; the lowest threshold wins.")
@click.option("--min-source-harmful", type=click.IntRange(1), default=20, show_default=True, help="With --per-source: harmful records a source needs to set the threshold.")
@click.option("--method", type=click.Choice(["platt", "isotonic"]), help="Recalibrate the ensemble score first (fitted on the same data).")
@click.option("--calibration-out", type=click.Path(dir_okay=False), help="Where --method writes the calibration JSON.")
@click.option("--write-config", type=click.Path(dir_okay=False), help="Write a copy of the config with this threshold (and calibration, and cascade bands) set.")
@click.option("--cascade-tolerance", type=click.FloatRange(0, 1), default=0.005, show_default=True,
              help="Cascade combiner: recall its bands may lose, and FPR they may add, against running every member (at the threshold, on validation).")
@click.option("--cascade-min-agreement", type=click.FloatRange(0, 1), default=0.99, show_default=True,
              help="Cascade combiner: share of validation verdicts that must equal running every member's.")
@click.option("--per-category", is_flag=True,
              help="Also pick each harm category's threshold (best validation F1) for `category_thresholds:` (needs category heads).")
@click.option("--out-of-source", is_flag=True,
              help="Choose on train + validation scores from members refitted without each record's source (stages 1 and 2 "
                   "and calibration, per fold of held-out sources, from the feature cache): the median harmful source "
                   "(--per-source: every one) reaches the target.")
@click.option("--source-folds", type=click.IntRange(2),
              help="With --out-of-source: folds of held-out sources (each refits every member once).  [default: 5]")
@click.option("--source-folds-from", type=click.Path(exists=True, dir_okay=False),
              help="With --out-of-source: hold out the folds an earlier --report recorded (and one more of the sources "
                   "it does not name), to compare two builds or two configs on the same held-out sources.")
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True,
              help="With --out-of-source: processes for the refits' layer probes (same result).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="Write the whole report (per source, per kind, the held-out folds) as JSON.")
@click.option("--by-kind", is_flag=True,
              help="Choose prompts' and responses' thresholds (and cascade bands) apart, each on its route's records: "
                   "--write-config writes them under `by_kind`.")
@click.option("--scores-out", type=click.Path(dir_okay=False),
              help="With --out-of-source: write the held-out member scores (.npz) to compare members and routes later.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Feature cache directory.")
def calibrate(config_path, data_path, target_recall, per_source, min_source_harmful, method, calibration_out, write_config,
              cascade_tolerance, cascade_min_agreement, per_category, out_of_source, source_folds, source_folds_from, jobs,
              report_path, by_kind, scores_out, cache_dir):
    """Pick the threshold that reaches --target-recall on validation data and report the FPR it costs.

    With the cascade combiner, also fit each stage's bands (low/high) at that threshold: the widest that keep the
    cascade within --cascade-tolerance of running every member (see docs/cascade.md)."""
    from .evaluation.calibrate import calibrate as run_calibration, calibrate_by_kind, write_calibrated_config
    from .evaluation.cascade_bands import BandRule
    from .evaluation.out_of_source import DEFAULT_SOURCE_FOLDS, RefitOptions, folds_of_report

    for given, name in ((scores_out, "--scores-out"), (source_folds_from, "--source-folds-from")):
        if given and not out_of_source:
            raise SirenError(f"{name} is for the out-of-source scores: add --out-of-source")
    if source_folds_from and source_folds is not None:
        raise SirenError("--source-folds and --source-folds-from both say which folds to hold out: give one")
    source_folds = folds_of_report(source_folds_from) if source_folds_from else source_folds or DEFAULT_SOURCE_FOLDS
    rule = BandRule(max_recall_loss=cascade_tolerance, max_fpr_rise=cascade_tolerance, min_agreement=cascade_min_agreement)
    options = dict(per_source=per_source, method=method, calibration_out=calibration_out, cache_dir=cache_dir,
                   progress=sys.stderr.isatty(), min_source_harmful=min_source_harmful, band_rule=rule,
                   per_category=per_category, out_of_source=out_of_source, source_folds=source_folds,
                   refit=RefitOptions(jobs=jobs), scores_out=scores_out)
    if by_kind:
        report = calibrate_by_kind(config_path, data_path, target_recall, **options)
        if write_config:
            write_calibrated_config(config_path, write_config, None, None, by_kind=report["by_kind"])
            report["written_config"] = write_config
        if report_path:
            from pathlib import Path

            Path(report_path).write_text(json.dumps(report, indent=2) + "\n")
        click.echo(json.dumps({kind: _calibration_summary(kind_report) for kind, kind_report in report["by_kind"].items()}
                              | ({"written_config": write_config} if write_config else {})))
        return
    report = run_calibration(config_path, data_path, target_recall, **options)
    categories = report["categories"]
    if write_config:
        write_calibrated_config(config_path, write_config, report["threshold"], calibration_out if method else None,
                                report["cascade"], categories["category_thresholds"] if categories else None)
        report["written_config"] = write_config
    if report_path:
        from pathlib import Path

        Path(report_path).write_text(json.dumps(report, indent=2) + "\n")
    click.echo(json.dumps(_calibration_summary(report) | ({"written_config": write_config} if write_config else {})))


def _calibration_summary(report: dict) -> dict:
    """What `calibrate` prints of its report: the threshold, what it gives on validation and out of source."""
    categories = report["categories"]
    summary = {key: report[key] for key in ("threshold", "target_recall", "chosen_on", "worst_recall_source", "worst_fpr_source",
                                            "calibration")}
    summary.update({"recall": report["validation"]["recall"], "fpr": report["validation"]["fpr"]})
    if report["out_of_source"] is not None:
        held = report["out_of_source"]
        summary["out_of_source"] = {"expected_recall_unseen_source": held["expected_recall_unseen_source"],
                                    "recall": held["overall"]["recall"], "fpr": held["overall"]["fpr"],
                                    "worst_fpr_source": max(held["fpr_by_source"].items(), key=lambda item: item[1], default=None)}
    if report["cascade"] is not None:
        summary["cascade"] = report["cascade"]
    if categories:
        summary["category_thresholds"] = categories["category_thresholds"]
        summary["category_macro_f1"] = {"configured": categories["configured"]["macro_f1"],
                                        "calibrated": categories["calibrated"]["macro_f1"]}
    return summary


@cli.group()
def data():
    """Build labelled safety data from offline PyPI-packaged sources."""


@data.command(name="build")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Split directory to write.")
@click.option("--seed", default=data_defaults.SEED, show_default=True, help="Seed for capping, splitting and templates.")
@click.option("--max-per-source", default=data_defaults.MAX_PER_SOURCE, show_default=True,
              help="At most this many records per source.")
@click.option("--max-chars", default=data_defaults.MAX_CHARS, show_default=True,
              help="Cut longer texts at a word boundary.")
@click.option("--sources", "source_names", multiple=True,
              help="Sources to build (repeat or comma-separate); default: the default sources (see `data sources`).")
@click.option("--no-templated-refusals", is_flag=True, help="Do not pair harmful prompts with templated refusals.")
@click.option("--no-templated-scenarios", is_flag=True,
              help="Do not wrap requests of both classes in the long first-person scenario templates.")
@click.option("--no-templated-hard-cases", is_flag=True,
              help="Do not add the templated hard cases (requests in the other surface form, defensive "
                   "questions, short benign instructions).")
@click.option("--draws-by-record", is_flag=True,
              help="Draw the generated sets' records and templates per record, so that a build that grows keeps "
                   "the generated records it had and the feature cache extracts only new texts (the committed "
                   "heads' split uses the sequential draws).")
@click.option("--translations", "translation_dirs", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="A directory `data translate` wrote (repeat for several): each kept translation joins the split of "
                   "the record it translates.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON instead of tables.")
def data_build(out_dir, seed, max_per_source, max_chars, source_names, no_templated_refusals, no_templated_scenarios,
               no_templated_hard_cases, draws_by_record, translation_dirs, as_json):
    """Write train/validation/test JSONL and manifest.json to OUT (needs the data packages; see README)."""
    from .data.build import BuildOptions, build_dataset, write_split_dir
    from .data.manifest import format_tables

    names = tuple(name.strip() for value in source_names for name in value.split(",") if name.strip())
    options = BuildOptions(seed=seed, max_per_source=max_per_source, max_chars=max_chars, sources=names,
                           templated_refusals=not no_templated_refusals,
                           templated_scenarios=not no_templated_scenarios,
                           templated_hard_cases=not no_templated_hard_cases, draws_by_record=draws_by_record,
                           translations=tuple(translation_dirs))
    manifest = write_split_dir(build_dataset(options), out_dir)
    if as_json:
        click.echo(json.dumps(manifest, indent=2, ensure_ascii=False))
        return
    click.echo(f"{out_dir}: {manifest['records']} records")
    click.echo(format_tables(manifest))


@data.command(name="compare")
@click.argument("old_dir", type=click.Path(file_okay=False, exists=True))
@click.argument("new_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--ignore", multiple=True, default=("categories",), show_default=True,
              help="Record fields left out of the comparison (repeat).")
def data_compare(old_dir, new_dir, ignore):
    """Check that NEW_DIR holds OLD_DIR's records, split by split and in order, apart from the --ignore fields
    (so cached features stay valid); exit 1 when they differ."""
    from .data.compare import compare_split_dirs

    comparisons = compare_split_dirs(old_dir, new_dir, tuple(ignore))
    for item in comparisons:
        verdict = "same" if item.same else f"DIFFERENT from line {item.first_difference}"
        click.echo(f"{item.split}: {item.old_records} -> {item.new_records} records, {verdict}")
    if not all(item.same for item in comparisons):
        sys.exit(1)


@data.command(name="conversations")
@click.option("--data", "data_path", required=True, type=click.Path(file_okay=False), help="Split directory.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="JSONL file of conversations to write.")
@click.option("--split", type=click.Choice(["test", "validation", "train"]), default="test", show_default=True)
@click.option("--per-kind", type=click.IntRange(1), default=100, show_default=True, help="Conversations of each kind (at most).")
@click.option("--seed", type=int, default=0, show_default=True)
def data_conversations(data_path, out_path, split, per_kind, seed):
    """Build evaluation conversations from a split: harmful requests spread over turns, harmful requests after
    benign chat, benign multi-turn chats, and benign chats whose last turn alone looks alarming."""
    from collections import Counter

    from .data.conversations import conversations_from_split, write_conversations

    conversations = conversations_from_split(data_path, split, per_kind, seed)
    write_conversations(out_path, conversations)
    counts = Counter(item.kind for item in conversations)
    click.echo(f"{out_path}: {len(conversations)} conversations ({', '.join(f'{k} {v}' for k, v in counts.items())})")


@data.command(name="translate")
@click.option("--data", "data_path", required=True, type=click.Path(file_okay=False), help="Split directory.")
@click.option("--split", type=click.Choice(["train", "validation", "test"]), default="train", show_default=True)
@click.option("--languages", required=True, help="Comma-separated language codes, e.g. hi,es,de.")
@click.option("--per-language", type=click.IntRange(1), default=200, show_default=True,
              help="Records translated into each language (each language gets its own stratified sample).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for <split>.<language>.jsonl, rejected.jsonl and report.json (a rerun resumes there).")
@config_option
@click.option("--member", default="qwen2.5-coder-0.5b", show_default=True,
              help="The member of --config whose instruct model translates (loaded with its LM head).")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True, help="Prompts per generation batch.")
@click.option("--max-new-tokens", type=click.IntRange(1), default=256, show_default=True,
              help="Tokens per translation at most; a translation that uses them all is rejected as cut off.")
@click.option("--max-chars", type=click.IntRange(1), help="Leave out records with a longer text, prompt or response.")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=0.8, show_default=True,
              help="Language ID confidence the output needs in the target language.")
@click.option("--back-translate", is_flag=True, help="Also translate back to English and require word-overlap F1 >= 0.4 "
                                                     "(doubles the cost).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the samples.")
def data_translate(data_path, split, languages, per_language, out_dir, config_path, member, batch_size, max_new_tokens,
                   max_chars, min_confidence, back_translate, seed):
    """Translate a stratified sample of a split into other languages with a member's instruct model, offline, keeping
    the translations that pass the filters (language ID, length ratio, not empty or echoed, optional back-translation).
    Slow on a CPU; a stopped run resumes where it was."""
    from .config import load_config
    from .data.records import read_dataset
    from .data.translate import TranslationOptions, parse_languages, translate_split
    from .data.translation_filters import FilterOptions
    from .members import adapter_of_member
    from .steering.language_model import InstructModel

    codes = parse_languages(languages)
    records = read_dataset(data_path, split)
    options = TranslationOptions(batch_size=batch_size, max_new_tokens=max_new_tokens,
                                 filters=FilterOptions(min_confidence=min_confidence, back_translate=back_translate))
    _log_progress_to_stderr()
    model = InstructModel.load(adapter_of_member(load_config(config_path), member))
    report = translate_split(model, records, split, codes, out_dir, per_language, seed, options, max_chars)
    for code, numbers in report["languages"].items():
        rejected = ", ".join(f"{reason} {count}" for reason, count in numbers["rejected"].items() if count) or "none"
        click.echo(f"{code}: {numbers['generated']} translated ({numbers['done_before']} done before), "
                   f"{numbers['kept']} kept, rejected: {rejected} ({numbers['seconds']} s); "
                   f"{numbers['kept_in_file']} in {split}.{code}.jsonl")


@data.command(name="sources")
def data_sources():
    """List the data sources, their package, labels, and whether the package is installed."""
    from .data.packages import package_root
    from .data.sources import SOURCES

    for entry in SOURCES.values():
        flags = [flag for flag, on in (("default", entry.default), ("eval-only", entry.eval_only)) if on]
        installed = "installed" if not entry.package or package_root(entry.package) else "NOT INSTALLED"
        click.echo(f"{entry.name:<22} {entry.labels:<8} {entry.package or '-':<20} {installed:<14} {','.join(flags):<18} "
                   f"{entry.description}")


@cli.command()
@config_option
@click.option("--host", default=ServeSettings.host, show_default=True, help="Address to bind; a non-loopback address needs an API key.")
@click.option("--port", default=ServeSettings.port, show_default=True, type=click.IntRange(0, 65535))
@click.option("--api-key", envvar=API_KEY_ENV, show_envvar=True,
              help="Require `Authorization: Bearer KEY` on /v1/* and /metrics.")
@click.option("--max-body-bytes", default=ServeSettings.max_body_bytes, show_default=True, type=click.IntRange(1), help="Largest request body (and WebSocket message).")
@click.option("--max-inputs", default=ServeSettings.max_inputs, show_default=True, type=click.IntRange(1), help="Most texts in one moderation request.")
@click.option("--max-chars", default=ServeSettings.max_chars, show_default=True, type=click.IntRange(1), help="Longest text (or streamed response) in characters.")
@click.option("--max-streams", default=ServeSettings.max_streams, show_default=True, type=click.IntRange(1), help="Concurrent WebSocket streams.")
@click.option("--stream-idle-timeout", default=ServeSettings.stream_idle_timeout_s, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Seconds a stream may wait for its next message before it is closed.")
@click.option("--request-timeout", default=ServeSettings.request_timeout_s, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Seconds a request may wait for its score; then the failure policy answers.")
@click.option("--header-timeout", default=ServeSettings.header_timeout_s, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Seconds a client has to send a request's headers (slow or silent clients are cut off).")
@click.option("--body-timeout", default=ServeSettings.body_timeout_s, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Seconds a client has to send a request's body once its headers are in.")
@click.option("--max-connections", default=ServeSettings.max_connections, show_default=True, type=click.IntRange(1),
              help="Open connections (HTTP and WebSocket); one more is answered 503.")
@click.option("--batch-wait-ms", default=ServeSettings.batch_wait_ms, show_default=True, type=click.FloatRange(0),
              help="How long the micro-batcher waits for more requests to join a batch.")
@click.option("--batch-max-texts", default=ServeSettings.batch_max_texts, show_default=True, type=click.IntRange(1),
              help="Texts per micro-batch; 1 turns micro-batching off.")
@click.option("--torch-threads", type=click.IntRange(1), help="torch threads for the model (default: torch's choice, one per core).")
@click.option("--log-level", default="info", show_default=True, type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@engine_option
@address_option
@click.option("--replicas", type=_Workers(), help="--engine ray: replicas, N, or MIN-MAX for Ray Serve to autoscale (default: the config's ray.serve, 1).")
@num_cpus_option
@num_gpus_option
@click.pass_context
def serve(ctx, config_path, host, port, api_key, max_body_bytes, max_inputs, max_chars, max_streams, stream_idle_timeout,
          request_timeout, header_timeout, body_timeout, max_connections, batch_wait_ms, batch_max_texts, torch_threads,
          log_level, engine, address, replicas, num_cpus, num_gpus):
    """Run the HTTP service: OpenAI-compatible /v1/moderations, /v1/score, /v1/rank, /v1/stream (WebSocket), /metrics.

    With --engine ray, the same app runs as a Ray Serve deployment of --replicas replicas, batched by Serve."""
    if engine == "ray":
        _refuse(ctx, _LOCAL_SERVER_OPTIONS, "not with --engine ray: Ray Serve's proxy holds the connections")
    else:
        _refuse(ctx, _RAY_SERVE_OPTIONS, "only with --engine ray")
    try:
        from .serve.app import create_app
        from .serve.server import build_server
    except ImportError as error:
        raise SirenError(f"the service needs the `serve` extra: pip install 'siren-ensemble[serve]' ({error})") from None
    from .config import load_config
    from .routing import Routes
    from .ensemble import Ensemble
    from .members import validate_plan

    settings = ServeSettings(
        host=host, port=port, api_key=api_key, max_body_bytes=max_body_bytes, max_inputs=max_inputs, max_chars=max_chars,
        max_streams=max_streams, stream_idle_timeout_s=stream_idle_timeout, request_timeout_s=request_timeout,
        header_timeout_s=header_timeout, body_timeout_s=body_timeout, max_connections=max_connections,
        batch_wait_ms=batch_wait_ms, batch_max_texts=batch_max_texts, torch_threads=torch_threads,
    )
    config = load_config(config_path)
    if engine == "ray":
        _ray_modules("serve --engine ray")
        from siren_ensemble.ray.serving import run_service

        options = _with_flags(config.ray.serve, replicas=replicas, num_cpus=num_cpus, num_gpus=num_gpus)
        run_service(config, settings, options, address, announce=lambda line: click.echo(line, err=True))
        return
    # A bad config stops here, before the port opens; weights load in the background.
    Routes.from_config(config, validate_plan(config)[0])
    build_server(create_app(lambda: Ensemble.from_config(config), settings), settings, log_level=log_level).run()


@cli.command()
@config_option
@click.option("--prompt", required=True, help="The prompt the candidates answer.")
@click.option("--candidates", "candidates_path", required=True,
              help='Candidate responses: a JSONL file of {"text"} or {"response"} lines, a file of plain lines, or - for stdin.')
@click.option("--method", type=click.Choice(REQUESTED_METHODS), default="auto", show_default=True,
              help="siren: the ensemble score of each (prompt, candidate) pair; srr: the SRR rankers beside the members' heads; "
                   "guarded: srr, with every candidate the ensemble flags after those it passes; "
                   "auto: guarded where a member has a ranker, else siren.")
@click.option("--verbose", "-v", is_flag=True, help="Say on stderr which method ranked.")
def rank(config_path, prompt, candidates_path, method, verbose):
    """Rank candidate responses to --prompt by safety: one JSON line each, safest first ({"index", "score", "members"},
    and "flagged" when guarded)."""
    from .ensemble import Ensemble
    from .inputs import read_inputs

    candidates = [record.text for record in read_inputs(candidates_path)]
    result = Ensemble.from_config(config_path).rank(prompt, candidates, method)
    if verbose:
        click.echo(f"ranked by {result.method}", err=True)
    for candidate in result.candidates:
        click.echo(json.dumps(candidate.to_dict(), ensure_ascii=False, allow_nan=False))


@cli.command(name="train-ranker")
@config_option
@click.option("--member", required=True, help="The member of --config whose backbone the ranker reads.")
@click.option("--data", "data_path", required=True, type=click.Path(file_okay=False), help="Split directory: groups from train, epochs chosen on validation.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for ranker.json + ranker.safetensors; the member's head directory makes `rank` use it.")
@click.option("--layers", "layers_text", help="Backbone layers to read, e.g. 7,15,22 (default: a quarter, half and three quarters of the depth).")
@click.option("--exclude-source", "exclude_sources", multiple=True, help="Leave this source's groups out of training (repeat), to test on it unseen.")
@click.option("--max-length", type=click.IntRange(1), default=512, show_default=True, help="Tokens read per text (as train; shares its feature cache).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), help="Default: the member's dtype.")
@click.option("--epochs", type=click.IntRange(1), default=150, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Feature cache directory.")
def train_ranker_command(config_path, member, data_path, out_dir, layers_text, exclude_sources, max_length, dtype, epochs, seed,
                         cache_dir):
    """Train an SRR ranker (Du et al.) for one member on ranking groups built from the split (see docs/ranking.md)."""
    from .config import load_config
    from .members import adapter_of_member
    from .ranking.training import RankerOptions, train_ranker
    from .training.feature_cache import FeatureExtractor

    _log_progress_to_stderr()
    adapter = adapter_of_member(load_config(config_path), member, dtype=dtype)
    options = RankerOptions(layers=_parse_layers(layers_text), epochs=epochs, seed=seed, exclude_sources=tuple(exclude_sources))
    report = train_ranker(FeatureExtractor(adapter, max_length=max_length, cache_dir=cache_dir), data_path, out_dir, options,
                          progress=sys.stderr.isatty())
    click.echo(json.dumps({"out": out_dir, "layers": report["config"]["layers"], "best_epoch": report["best_epoch"],
                           "validation": report["validation"], "groups": {k: v["total"] for k, v in report["groups"].items()}}))


@cli.command(name="evaluate-ranker")
@config_option
@click.option("--data", "data_path", required=True, type=click.Path(file_okay=False), help="Split directory.")
@click.option("--split", type=click.Choice(["test", "validation", "train"]), default="test", show_default=True)
@click.option("--ranker", "rankers", multiple=True, metavar="MEMBER=DIR",
              help="Evaluate the ranker in DIR for MEMBER (repeat); default: the rankers beside the members' heads.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="Write the full report as JSON here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG of each ranker's pairwise accuracy per subset here.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the added refusals and of the random ranker.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Feature cache directory.")
def evaluate_ranker_command(config_path, data_path, split, rankers, out_path, plot_path, seed, cache_dir):
    """Pairwise accuracy, top-1 rate and NDCG of a random ranker, the SIREN score and the SRR rankers, per source."""
    from pathlib import Path

    from .ranking.evaluation import RankerEvaluationOptions, evaluate_rankers, render

    _log_progress_to_stderr()
    overrides = {}
    for item in rankers:
        name, separator, directory = item.partition("=")
        if not separator or not name or not directory:
            raise SirenError(f"--ranker: expected MEMBER=DIR, got {item!r}")
        overrides[name] = Path(directory)
    report = evaluate_rankers(config_path, data_path, RankerEvaluationOptions(split=split, seed=seed, rankers=overrides),
                              cache_dir, progress=sys.stderr.isatty())
    if out_path:
        Path(out_path).write_text(json.dumps(report, indent=2) + "\n")
    if plot_path:
        from .evaluation.plots import ranking_bars

        ranking_bars(report, plot_path)
    click.echo(render(report))


@cli.group()
def steer():
    """Steer a member's instruct model with our probe directions (h' = h + lambda * v); see docs/steering.md."""


@steer.command(name="export")
@config_option
@click.option("--member", required=True, help="The member of --config whose backbone the directions belong to.")
@click.option("--data", "data_path", required=True, type=click.Path(file_okay=False), help="Split directory: probes fit on train, C picked on validation.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory for directions.json + directions.safetensors.")
@click.option("--layers", "layers_text", help="Layers to export, e.g. 10-20 (default: all).")
@click.option("--max-length", type=click.IntRange(1), default=512, show_default=True, help="Tokens read per text (as train; shares its feature cache).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), help="Default: the member's dtype.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True, help="Processes fitting the layer probes side by side (same result).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Feature cache directory.")
def steer_export(config_path, member, data_path, out_dir, layers_text, max_length, dtype, seed, jobs, cache_dir):
    """Per layer, the unit safety direction of the stage-1 probe and of the class means (benign -> harmful)."""
    from .config import load_config
    from .members import adapter_of_member
    from .steering.directions import export_directions
    from .training.feature_cache import FeatureExtractor

    _log_progress_to_stderr()
    adapter = adapter_of_member(load_config(config_path), member, dtype=dtype)
    directions = export_directions(FeatureExtractor(adapter, max_length=max_length, cache_dir=cache_dir), data_path,
                                   _parse_layers(layers_text), seed=seed, jobs=jobs, progress=sys.stderr.isatty())
    directions.save(out_dir)
    for entry in directions.config.layers:
        click.echo(json.dumps(entry.model_dump(mode="json")))


@steer.command(name="evaluate")
@config_option
@click.option("--member", required=True, help="The member of --config whose model is steered (loaded with its LM head).")
@click.option("--directions", "directions_dir", required=True, type=click.Path(file_okay=False), help="From `steer export`.")
@click.option("--data", "data_path", required=True, type=click.Path(file_okay=False), help="Split directory: held-out prompts from --split.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory for steering.json and steering.png.")
@click.option("--lambdas", default="2,4,8", show_default=True, help="Comma-separated lambdas (the unsteered model is always measured too).")
@click.option("--layers", "layer_sets", multiple=True, required=True, help="A set of layers steered together, e.g. 15 or 13-15 (repeat for more sets).")
@click.option("--lambda-unit", type=click.Choice(["gap", "projected_gap", "absolute"]), default="gap", show_default=True,
              help="gap: lambda counts each layer's class gap (harmful minus benign mean state); projected_gap: that gap's "
                   "length along the direction; absolute: raw state units.")
@click.option("--direction", type=click.Choice(["probe", "mean_difference"]), default="probe", show_default=True)
@click.option("--harmful", type=click.IntRange(1), default=100, show_default=True, help="Held-out harmful prompts.")
@click.option("--benign", type=click.IntRange(1), default=100, show_default=True, help="Held-out benign prompts.")
@click.option("--max-new-tokens", type=click.IntRange(1), default=64, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--split", type=click.Choice(["test", "validation"]), default="test", show_default=True)
@click.option("--judge-config", type=click.Path(dir_okay=False), default=str(DEFAULT_CONFIG),
              show_default="the packaged default ensemble", help="The ensemble that judges the answers (response level).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), help="Default: the member's dtype.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the prompt sample.")
def steer_evaluate(config_path, member, directions_dir, data_path, out_dir, lambdas, layer_sets, lambda_unit, direction, harmful,
                   benign, max_new_tokens, batch_size, split, judge_config, dtype, seed):
    """Sweep lambda x layer sets: refusal on held-out harmful and benign prompts (phrases, ensemble) and perplexity."""
    from pathlib import Path

    from .config import load_config
    from .ensemble import Ensemble
    from .evaluation.plots import steering_tradeoff
    from .members import adapter_of_member
    from .steering.directions import SteeringDirections
    from .steering.language_model import InstructModel
    from .steering.sweep import SweepOptions, held_out_prompts, render, run_sweep

    _log_progress_to_stderr()
    try:
        values = tuple(float(value) for value in lambdas.split(","))
    except ValueError:
        raise SirenError(f"--lambdas: expected comma-separated numbers, got {lambdas!r}") from None
    sets = tuple(_parse_layers(text) or () for text in layer_sets)
    options = SweepOptions(lambdas=values, layer_sets=sets, lambda_unit=lambda_unit, direction=direction, harmful=harmful,
                           benign=benign, max_new_tokens=max_new_tokens, batch_size=batch_size, split=split, seed=seed)
    directions = SteeringDirections.load(directions_dir)
    prompts = held_out_prompts(data_path, split, harmful, benign, seed)
    model = InstructModel.load(adapter_of_member(load_config(config_path), member, dtype=dtype))
    report = run_sweep(model, directions, Ensemble.from_config(judge_config), prompts, options, progress=sys.stderr.isatty())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "steering.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    steering_tradeoff(report, out / "steering.png")
    click.echo(render(report))


def main() -> None:
    cli(prog_name="siren-ensemble")
