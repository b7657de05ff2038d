"""The `megascience` command: run the pipeline or one stage, and look at the lake (status, sql, lineage)."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from functools import partial
from typing import Sequence

from megascience.jobs.platform.config import Config, ConfigError, load_config
from megascience.jobs.platform.settings import LakeSettings


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _ms_to_text(ms: int | None) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class Workspace:
    """The Spark session and the lake for one command, opened on first use."""

    def __init__(self, config: Config):
        self.config = config
        self._lake = None

    @property
    def lake(self):
        if self._lake is None:
            from megascience.jobs.platform.session import get_spark
            from megascience.jobs.platform.tables import Lakehouse

            self._lake = Lakehouse.open(get_spark(self.config), self.config)
        return self._lake

    @property
    def spark(self):
        return self.lake.spark


def _table_rows(ws: Workspace) -> list[list[object]]:
    from megascience.jobs.platform.lineage import describe_run

    rows = []
    for table in ws.lake.status():
        if not table["exists"]:
            rows.append([table["table"], "-", "-", "not created yet", "", ""])
            continue
        run_id, run_text = table["run_id"] or "", ""
        if run_id:
            try:
                facts = describe_run(ws.config, run_id)
                run_text = f"{facts.name} {facts.status}"
            except Exception as err:  # the tracking store may be elsewhere (another machine's lake); say so
                run_text = f"(run not found: {type(err).__name__})"
        when = table["committed"].strftime("%Y-%m-%d %H:%M:%S UTC")
        rows.append([table["table"], table["rows"], table["version"], f"{table['operation']} {when}", run_id, run_text])
    return rows


def print_status(ws: Workspace) -> None:
    print(f"lake: {LakeSettings.of(ws.config).root}  backend: {ws.lake.backend_name}  profile: {ws.config.profile}")
    print(_table(["table", "rows", "version", "last commit", "by run", "run"], _table_rows(ws)))


def _command_prefix() -> str:
    """How the user can call us again: plain `megascience` if the venv is on PATH, else its path."""
    bin_dir = os.path.dirname(sys.executable)
    if bin_dir in os.environ.get("PATH", "").split(os.pathsep):
        return ""
    return os.path.relpath(bin_dir) + os.sep


def print_next_steps(ws: Workspace) -> None:
    from megascience.jobs.platform.lineage import tracking_uri

    prefix = _command_prefix()
    print(
        "\nLook further:\n"
        f"  {prefix}megascience status              tables, versions and the runs that wrote them\n"
        f'  {prefix}megascience sql "select status, reason, count(*) from books group by status, reason"\n'
        f"  {prefix}megascience lineage books       which run and input versions made the current version\n"
        f"  {prefix}mlflow ui --backend-store-uri {tracking_uri(ws.config)}"
    )


def cmd_run(ws: Workspace, args) -> int:
    from megascience.jobs.pipeline import run_pipeline, select_stages
    from megascience.jobs.platform.llm import SMOKE_BANNER, announce_smoke_model

    stages = select_stages(args.start, args.until, ws.config)
    print(f"megascience: running {', '.join(s.name for s in stages)} (profile {ws.config.profile}, backend {ws.lake.backend_name})")
    smoke = announce_smoke_model(ws.config, [role for stage in stages for role in stage.roles])
    tags = {"llm.smoke_model": "true"} if smoke else None
    run_pipeline(ws.spark, ws.config, ws.lake, stages, tags=tags, on_start=partial(_name_log, args.console))
    print()
    print_status(ws)
    print_next_steps(ws)
    if smoke:
        print(SMOKE_BANNER)
    return 0


def cmd_stage(ws: Workspace, args) -> int:
    from megascience.jobs.pipeline import run_pipeline, stage_named

    run_pipeline(ws.spark, ws.config, ws.lake, [stage_named(args.name)], on_start=partial(_name_log, args.console))
    return 0


def _name_log(console, pipeline_run_id: str) -> None:
    """Inside the pipeline's MLflow run: the log file takes its id and the run is tagged with its path."""
    if console is not None:
        import mlflow

        from megascience.jobs.cli.console import LOG_FILE_TAG

        mlflow.set_tag(LOG_FILE_TAG, str(console.name_after(pipeline_run_id)))


def cmd_stages(config: Config, args) -> int:
    """The stages in run order, as declared: what each reads, writes, asks of a model and which settings section it
    reads, in one line each."""
    from megascience.jobs.pipeline import ordered_stages

    rows = [
        [stage.name, ", ".join(stage.inputs), ", ".join(stage.writes), ", ".join(stage.roles) or "-",
         stage.config_section or "-", stage.description]
        for stage in ordered_stages(config)
    ]
    print(_table(["stage", "reads", "writes", "roles", "settings", "what it does"], rows))
    return 0


def cmd_status(ws: Workspace, args) -> int:
    print_status(ws)
    return 0


def _print_result(result, limit: int) -> None:
    rows = result.limit(limit + 1).collect()
    print(_table(result.columns, [list(row) for row in rows[:limit]]))
    if len(rows) > limit:
        print(f"(first {limit} rows; use --limit to see more)")


def cmd_sql(ws: Workspace, args) -> int:
    ws.lake.register_all()
    _print_result(ws.spark.sql(args.query), args.limit)
    return 0


def cmd_query(ws: Workspace, args) -> int:
    from megascience.jobs.cli.queries import describe, run_query, saved_queries

    if not args.name:
        for name, sql in saved_queries().items():
            print(f"{name:32} {describe(sql)}")
        return 0
    ws.lake.register_all()
    params = dict(item.partition("=")[::2] for item in args.param)
    _print_result(run_query(ws.spark, args.name, params), args.limit)
    return 0


def _dict_table(rows: list[dict]) -> str:
    return _table(list(rows[0]), [list(row.values()) for row in rows]) if rows else "(none)"


def cmd_funnel(ws: Workspace, args) -> int:
    from megascience.jobs.cli.funnel import external_funnel_from_lake, funnel_from_lake

    textbook = funnel_from_lake(ws.lake)
    tables = [table for table in (textbook, external_funnel_from_lake(ws.lake)) if table is not None]
    if not tables:
        print("no QA table yet: run the pipeline through extract (or ingest_external) first")
        return 0
    print("\n\n".join(_table(table.columns, [list(row) for row in table.collect()]) for table in tables))
    if args.paper:
        from megascience.jobs.cli.export import beside_the_paper

        for title, rows in beside_the_paper(ws.lake, ws.config, textbook):
            print(f"\n{title}:\n{_dict_table(rows)}")
    return 0


def _shortened(text: str | None, width: int) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def cmd_contamination(ws: Workspace, args) -> int:
    from megascience.jobs.stages.decontaminate import contamination_summary, matched_pairs

    if not ws.lake.exists("contamination"):
        print("no contamination table yet: run the pipeline through decontaminate first")
        return 0
    pairs, items = ws.lake.read("contamination"), ws.lake.read_or_empty("benchmarks")
    summary = contamination_summary(pairs, items)
    print(_table(summary.columns, [list(row) for row in summary.collect()]))
    samples = matched_pairs(pairs, ws.lake.read_or_empty("qa_filtered"), items, args.samples).collect()
    if samples:
        print(f"\npairs judged the same problem (up to {args.samples} per benchmark, most similar first):")
    for row in samples:
        print(f"\n{row['benchmark']} {row['item_id']}  cosine {row['cosine']:.3f}  question {row['qa_id'][:12]}")
        print(f"  training:  {_shortened(row['question'], 150)}")
        print(f"  benchmark: {_shortened(row['benchmark_question'], 150)}")
    return 0


def cmd_lineage(ws: Workspace, args) -> int:
    from megascience.jobs.platform.lineage import describe_run

    history = ws.lake.history(args.table)
    entry = next((h for h in history if args.version is None or h.version == args.version), None)
    if entry is None:
        print(f"error: {args.table} has no version {args.version}", file=sys.stderr)
        return 2
    print(f"{args.table} version {entry.version} ({entry.operation}, {entry.timestamp:%Y-%m-%d %H:%M:%S} UTC)")
    print(f"  location: {ws.lake.location(args.table)}")
    run_id = entry.user_metadata.get("mlflow_run_id")
    if not run_id:
        print("  no MLflow run recorded in this commit (written outside megascience)")
        return 0
    run = describe_run(ws.config, run_id)
    print(f"  made by run {run.run_id} (stage {run.name}, {run.status}, {_ms_to_text(run.start_time)})")
    if run.parent_run_id:
        print(f"  in pipeline run {run.parent_run_id}")
    for context, table, version in run.inputs:
        print(f"  {context}: {table} version {version}")
    for key in sorted(run.metrics):
        print(f"  metric {key} = {run.metrics[key]:g}")
    for key in sorted(run.params):
        print(f"  param {key} = {run.params[key]}")
    older = [h for h in history if h.version < entry.version]
    if older:
        print("  earlier versions:")
        for h in older:
            print(f"    v{h.version} {h.operation} by run {h.user_metadata.get('mlflow_run_id', '-')}")
    return 0


def cmd_export(ws: Workspace, args) -> int:
    from megascience.jobs.cli.export import export_table

    done = export_table(ws.lake, ws.config, args.table, args.version, args.out, args.subset)
    what = f"{done.table} version {done.version}" if not args.subset else f"{done.table} (subset {args.subset})"
    print(f"{what}: {done.rows} rows exported to {done.directory}")
    for path in done.files:
        print(f"  {path.relative_to(done.directory)}")
    return 0


def cmd_smoke_model(ws: Workspace | None, args) -> int:
    from megascience.jobs.platform.smoke_model import build_smoke_model

    print(build_smoke_model(args.directory))
    return 0


def cmd_sample_corpus(ws: Workspace | None, args) -> int:
    from megascience.jobs.cli.sample_corpus import build_sample_corpus

    for path in build_sample_corpus(args.directory):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", help="conf/<name>.yaml (local, cluster) or a path to a YAML profile")
    common.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one setting"
    )
    common.add_argument(
        "--verbose", action="store_true", help="run / stage: show Spark's, the engines' and libraries' output too"
    )
    parser = argparse.ArgumentParser(prog="megascience", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", parents=[common], help="run the pipeline (all stages, or a slice)")
    run.add_argument("--from", dest="start", metavar="STAGE", help="first stage to run")
    run.add_argument("--until", metavar="STAGE", help="last stage to run")
    run.set_defaults(handler=cmd_run, quiet=True)

    stage = commands.add_parser("stage", parents=[common], help="run one stage")
    stage.add_argument("name")
    stage.set_defaults(handler=cmd_stage, quiet=True)

    stages = commands.add_parser("stages", parents=[common], help="the stages in run order: reads, writes, roles, what each does")
    stages.set_defaults(handler=cmd_stages, needs_config_only=True)

    status = commands.add_parser("status", parents=[common], help="every table: rows, version, last run")
    status.set_defaults(handler=cmd_status)

    sql = commands.add_parser("sql", parents=[common], help="run a SQL query; every table is registered by name")
    sql.add_argument("query")
    sql.add_argument("--limit", type=int, default=100)
    sql.set_defaults(handler=cmd_sql)

    query = commands.add_parser("query", parents=[common], help="run a saved query of conf/queries (no name: list them)")
    query.add_argument("name", nargs="?")
    query.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a :name parameter")
    query.add_argument("--limit", type=int, default=100)
    query.set_defaults(handler=cmd_query)

    funnel = commands.add_parser(
        "funnel", parents=[common], help="kept pairs per subject (and per external dataset) at each curation step"
    )
    funnel.add_argument(
        "--paper", action="store_true", help="also the shares kept at each step next to the paper's, the corpus yield and LLM usage"
    )
    funnel.set_defaults(handler=cmd_funnel)

    contamination = commands.add_parser(
        "contamination", parents=[common], help="per benchmark: training questions matched, judged pairs, sample pairs"
    )
    contamination.add_argument("--samples", type=int, default=3, help="pairs judged the same shown per benchmark")
    contamination.set_defaults(handler=cmd_contamination)

    lineage = commands.add_parser("lineage", parents=[common], help="which run and inputs made a table version")
    lineage.add_argument("table")
    lineage.add_argument("--version", type=int, help="a past version (default: the current one)")
    lineage.set_defaults(handler=cmd_lineage)

    export = commands.add_parser(
        "export", parents=[common], help="a gold table version -> parquet, JSONL, LLaMA-Factory files and a dataset card"
    )
    export.add_argument("--table", default="megascience", help="megascience (default) or textbook_reasoning")
    export.add_argument("--version", type=int, help="the Delta version to export (default: the current one)")
    export.add_argument("--out", help="the output folder (default: export.dir, else <lake.root>/exports/<table>-v<version>)")
    export.add_argument(
        "--subset",
        help="an ablation instead of a gold table: unrefined (pairs before refine) or selection:<length|difficulty|random>",
    )
    export.set_defaults(handler=cmd_export)

    sample = commands.add_parser("sample-corpus", help="write the bundled sample PDFs into a directory")
    sample.add_argument("directory")
    sample.set_defaults(handler=cmd_sample_corpus, needs_lake=False)

    smoke = commands.add_parser("smoke-model", help="build the tiny random test model (offline) into a directory")
    smoke.add_argument("directory")
    smoke.set_defaults(handler=cmd_smoke_model, needs_lake=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from megascience.jobs.pipeline import StageSelectionError
    from megascience.jobs.platform.tables import TableError

    args = build_parser().parse_args(argv)
    try:
        if not getattr(args, "needs_lake", True):
            return args.handler(None, args)
        config = load_config(args.profile, args.overrides)
        if getattr(args, "needs_config_only", False):
            return args.handler(config, args)
        args.console = None
        if getattr(args, "quiet", False) and not args.verbose:
            from megascience.jobs.cli.console import QuietConsole, log_dir

            with QuietConsole(log_dir(LakeSettings.of(config).root)) as args.console:
                return args.handler(Workspace(config), args)
        return args.handler(Workspace(config), args)
    except (ConfigError, StageSelectionError, TableError) as err:  # a SourceError is a ConfigError
        print(f"megascience: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
