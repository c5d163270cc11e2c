"""The book pipeline as Dataflow would receive it, built offline: no job is submitted, no GCP
credentials or network are used.

`--dry_run=True` (Beam's TestOptions) makes `DataflowRunner.run_pipeline` do everything up to the
API call: apply Dataflow's overrides, stage the `--setup_file` sdist into a local temp folder (the
same `Stager.create_job_resources` a real submission runs), translate to the portable pipeline
proto that Dataflow Runner v2 executes, and wrap it in `apiclient.Job`. The Dataflow worker-pool
environment is then built from that Job with `apiclient.Environment`, the pure part of
`create_job_description` (which otherwise uploads to GCS).

Needs the `gcp` extra (google-cloud-dataflow-client) and `build` + `wheel` (Beam builds the sdist
with `python -m build --no-isolation --sdist`); both are in the `dev` extra, so `make test` runs it.
"""

from __future__ import annotations

import re
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_TOKENIZER = "package:mistral_common/data/tokenizer.model.v1"
DOCKERFILE = REPO / "docker" / "worker.Dockerfile"
WORKER_IMAGE = "us-central1-docker.pkg.dev/test-project/longctx/worker:test"
GPU_SERVICE_OPTION = "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
GBK_URN = "beam:transform:group_by_key:v1"
PARDO_URN = "beam:transform:pardo:v1"
COMBINE_PER_KEY_URN = "beam:transform:combine_per_key:v1"


# --------------------------------------------------------------------------------------------
# The job, built once for the module
# --------------------------------------------------------------------------------------------


def _dataflow_flags() -> list[str]:
    return [
        "--runner=DataflowRunner",
        "--project=test-project",
        "--region=us-central1",
        "--job_name=longctx-books-graph-test",
        "--temp_location=gs://bucket/tmp",
        "--staging_location=gs://bucket/staging",
        "--setup_file", str(REPO / "setup.py"),
        "--sdk_container_image", WORKER_IMAGE,
        "--experiments=use_runner_v2",
        "--machine_type=g2-standard-8",
        "--max_num_workers=4",
        f"--dataflow_service_options={GPU_SERVICE_OPTION}",
        "--dry_run=True",
    ]


@pytest.fixture(scope="module")
def dataflow_job(tmp_path_factory):
    """(pipeline proto, apiclient.Job, sdist commands run, temp dir) for the books pipeline."""
    pytest.importorskip("google.cloud.dataflow", reason="needs the gcp extra: pip install -e '.[gcp]'")
    pytest.importorskip("build", reason="Beam builds the --setup_file sdist with `python -m build`")

    import apache_beam as beam
    from apache_beam.utils import processes

    from pipelines.books import BuildBookShards
    from pipelines.config import BooksConfig
    from pipelines.launch import pipeline_options, shard_metadata

    config = BooksConfig(
        inputs=["gs://bucket/in/*.jsonl.gz"],
        output="gs://bucket/out",
        tokenizer=DEMO_TOKENIZER,
        stages=["32k", "128k"],
    )
    metadata = shard_metadata(config, "books")
    tmp = tmp_path_factory.mktemp("dataflow")

    commands: list[list[str]] = []
    real_check_output = processes.check_output

    def recording_check_output(*args, **kwargs):
        commands.append([str(a) for a in (args[0] if args else kwargs.get("args", []))])
        return real_check_output(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        # The stager's temp folders (sdist, pickled session, ...) land under pytest's tmp dir.
        mp.setattr(tempfile, "tempdir", str(tmp))
        mp.setattr(processes, "check_output", recording_check_output)
        pipeline = beam.Pipeline(options=pipeline_options(_dataflow_flags()))
        _ = pipeline | "Books" >> BuildBookShards(config, metadata)
        result = pipeline.run()  # dry run: translated and staged locally, never submitted
    job = result.job
    return types.SimpleNamespace(proto=job.proto_pipeline, job=job, commands=commands, tmp=tmp)


def _names(proto) -> set[str]:
    return {t.unique_name for t in proto.components.transforms.values()}


def _producers(proto) -> dict[str, str]:
    """PCollection id -> id of the (innermost) transform that outputs it."""
    out: dict[str, str] = {}
    for tid, t in proto.components.transforms.items():
        if t.subtransforms:
            continue
        for pc in t.outputs.values():
            out[pc] = tid
    return out


def _parents(proto) -> dict[str, str]:
    return {child: tid for tid, t in proto.components.transforms.items() for child in t.subtransforms}


def _dofn(transform):
    """The DoFn object of a ParDo in the proto, unpickled as the worker would."""
    from apache_beam.internal import pickler
    from apache_beam.portability.api import beam_runner_api_pb2

    payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
    fn, *_ = pickler.loads(payload.do_fn.payload)
    return fn


def _has_step(names: set[str], step: str) -> bool:
    """A step by its trailing path ("PackAndWrite/Pack"), wherever composites nest it."""
    return any(n == f"Books/{step}" or n.endswith(f"/{step}") for n in names)


def _by_step(proto, step: str):
    matches = [t for t in proto.components.transforms.values() if t.unique_name == f"Books/{step}" or t.unique_name.endswith(f"/{step}")]
    assert len(matches) == 1, f"{step}: {[t.unique_name for t in matches]}"
    return matches[0]


def _primitive(proto, step: str):
    """A ParDo step's primitive transform (the one that holds the DoFn), under a composite
    wrapper if Beam added one."""
    t = _by_step(proto, step)
    if t.subtransforms:
        (child,) = t.subtransforms
        t = proto.components.transforms[child]
    return t


def _staged(proto) -> dict[str, str]:
    """Staged file name on the worker -> local path, over all environments' artifacts."""
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2

    out = {}
    for env in proto.components.environments.values():
        for dep in env.dependencies:
            assert dep.type_urn == common_urns.artifact_types.FILE.urn
            assert dep.role_urn == common_urns.artifact_roles.STAGING_TO.urn
            name = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(dep.role_payload).staged_name
            out[name] = beam_runner_api_pb2.ArtifactFilePayload.FromString(dep.type_payload).path
    return out


# --------------------------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------------------------


def test_graph_has_the_named_steps(dataflow_job):
    names = _names(dataflow_job.proto)
    expected = [
        "Read/Parse",
        "SpreadDocuments",
        "Clean",
        "Deduplicate",
        "Deduplicate/GroupByContent",
        "Tokenize",
        "AssignStages",
        "PackAndWrite",
        "PackAndWrite/AssignGroup",
        "PackAndWrite/GroupSegments",
        "PackAndWrite/Pack",
        "PackAndWrite/Route",
        "PackAndWrite/JoinPlaces",
        "PackAndWrite/GroupByShard",
        "PackAndWrite/Write",
        "Rejects",
        "Manifest",
    ]
    missing = [n for n in expected if not _has_step(names, n)]
    assert not missing, f"missing steps: {missing}"
    # The DoFns on the worker are ours, by reference to the staged package.
    from pipelines.books import CleanText, Tokenize
    from pipelines.packing import AssignGroup, PackGroup, RouteToShard, WriteShard

    for name, cls in [
        ("Clean/ParDo(CleanText)", CleanText),
        ("Tokenize/ParDo(Tokenize)", Tokenize),
        ("PackAndWrite/AssignGroup", AssignGroup),
        ("PackAndWrite/Pack", PackGroup),
        ("PackAndWrite/Route", RouteToShard),
        ("PackAndWrite/Write", WriteShard),
    ]:
        t = _primitive(dataflow_job.proto, name)
        assert t.spec.urn == PARDO_URN, name
        assert type(_dofn(t)) is cls, name


def _sample_refs(n_docs: int, stages=("32k", "128k")):
    from curation.packing import SegmentRef, StageRef

    out = []
    for d in range(n_docs):
        for stage in stages:
            for start in (0, 1000):
                ref = SegmentRef(key=f"doc{d}@{start}", doc_id=f"doc{d}", start=start, length=1000)
                out.append(StageRef(stage, ref, f"uid-{d}"))
    return out


def test_the_front_runs_on_spread_documents(dataflow_job):
    """Clean (and the quality, language and MinHash steps fused after it) reads documents spread
    over the workers by a reshuffle, not the reader's output: a compressed input is read whole by
    one worker, and would otherwise be cleaned and judged by that worker alone."""
    proto = dataflow_job.proto
    (docs,) = _primitive(proto, "Clean/ParDo(CleanText)").inputs.values()
    feeder = proto.components.transforms[_producers(proto)[docs]].unique_name
    assert "/Prepare/SpreadDocuments/" in feeder, feeder


def test_packing_is_grouped_by_stage_and_group_not_by_stage(dataflow_job):
    """No GroupByKey in PackAndWrite is keyed by stage alone: its GBKs are fed by AssignGroup
    ((stage, group) keys: references only), by the join of each segment with its place ((stage,
    segment key)), by ToShard ((stage, shard, count) keys), or sit inside a combiner (lifted:
    partial sums, never a whole stage)."""
    proto = dataflow_job.proto
    transforms = proto.components.transforms
    producers, parents = _producers(proto), _parents(proto)
    from pipelines.packing import AssignGroup, RouteToShard

    feeders = {}
    for tid, t in transforms.items():
        if t.spec.urn != GBK_URN or "/PackAndWrite/" not in t.unique_name:
            continue
        parent = transforms[parents[tid]]
        if parent.spec.urn == COMBINE_PER_KEY_URN:
            continue  # StageTokens: CombinePerKey(sum) of ints, combiner-lifted
        (pc,) = t.inputs.values()
        feeders[t.unique_name.split("/PackAndWrite/", 1)[1]] = transforms[producers[pc]]
    assert set(feeders) == {"GroupSegments", "JoinPlaces/CoGroupByKeyImpl/GroupByKey", "GroupByShard"}, sorted(feeders)
    assert isinstance(_dofn(feeders["GroupSegments"]), AssignGroup)
    assert "/PackAndWrite/ToShard" in feeders["GroupByShard"].unique_name
    # The join's inputs: every segment keyed by (stage, segment key), and every place by the same.
    join = _by_step(proto, "PackAndWrite/JoinPlaces")
    fed_by = {transforms[producers[pc]].unique_name.split("/PackAndWrite/", 1)[1].split("/")[0] for pc in join.inputs.values()}
    assert fed_by == {"BySegment", "Route"}, fed_by

    # Run the very DoFn objects the workers get: a stage with 4x the group budget is split into
    # 4 groups, keys are (stage, group), and all windows of one document share a group.
    assign = _dofn(feeders["GroupSegments"])
    budget = assign.group_tokens
    stage_tokens = {"32k": 4 * budget, "128k": 4 * budget}
    keyed = [kv for item in _sample_refs(64) for kv in assign.process(item, stage_tokens)]
    keys = {k for k, _ in keyed}
    assert all(isinstance(k, tuple) and len(k) == 2 and isinstance(k[0], str) and isinstance(k[1], int) for k in keys)
    for stage in stage_tokens:
        assert {g for s, g in keys if s == stage} == {0, 1, 2, 3}, stage
    group_of = {}
    for (stage, group), item in keyed:
        assert item.stage == stage
        assert group_of.setdefault((stage, item.doc_uid), group) == group

    route = _dofn(_primitive(proto, "PackAndWrite/Route"))
    assert isinstance(route, RouteToShard)
    group_rows = {("32k", 0): 3, ("32k", 1): 2}
    ((join_key, ((stage, shard, count), place)),) = list(route.process((("32k", 1), (0, 0, 0, "doc1@0")), group_rows))
    assert join_key == ("32k", "doc1@0") and stage == "32k" and isinstance(shard, int) and isinstance(count, int)
    assert place.row >= 0 and place.index == 0 and place.offset == 0


def test_packing_group_keys_are_deterministically_encoded(dataflow_job):
    """Dataflow groups by encoded key bytes, so the GBK key coders must be deterministic (packing
    and deduplication: every GroupByKey that decides what is kept or where it goes)."""
    from apache_beam.runners import pipeline_context

    proto = dataflow_job.proto
    context = pipeline_context.PipelineContext(proto.components)
    for name, key in [("PackAndWrite/GroupSegments", ("32k", 3)), ("PackAndWrite/JoinPlaces/CoGroupByKeyImpl/GroupByKey", ("32k", "doc1@0")),
                      ("PackAndWrite/GroupByShard", ("32k", 3, 7)), ("Deduplicate/GroupByContent", "ab" * 32),
                      ("Deduplicate/NearDuplicates/LeaveOutCopies/CoGroupByKeyImpl/GroupByKey", "gs://b/x.jsonl#3"),
                      ("Deduplicate/NearDuplicates/GroupByBand", "7:0a1b2c"),
                      ("Deduplicate/JoinRejects/CoGroupByKeyImpl/GroupByKey", "gs://b/x.jsonl#3")]:
        (pc,) = _by_step(proto, name).inputs.values()
        coder = context.coders.get_by_id(proto.components.pcollections[pc].coder_id)
        assert coder.is_kv_coder(), (name, coder)
        key_coder = coder.key_coder()
        assert key_coder.is_deterministic(), (name, key_coder)
        assert key_coder.decode(key_coder.encode(key)) == key


# --------------------------------------------------------------------------------------------
# Staging: the sdist Dataflow installs on every worker
# --------------------------------------------------------------------------------------------


def test_setup_file_is_built_with_python_m_build(dataflow_job):
    """Beam first tries `python -m build --no-isolation --sdist`; only for setup.py does it fall
    back to the deprecated `setup.py sdist` (pyproject.toml has no fallback). The first must work:
    `build` and the build-system requirements (setuptools, wheel) are installed."""
    sdist_cmds = [c for c in dataflow_job.commands if "sdist" in c or "--sdist" in c]
    assert sdist_cmds, dataflow_job.commands
    assert len(sdist_cmds) == 1, f"legacy fallback used: {sdist_cmds}"
    assert sdist_cmds[0][1:5] == ["-m", "build", "--no-isolation", "--sdist"]


def test_staged_sdist_contains_our_package(dataflow_job):
    staged = _staged(dataflow_job.proto)
    assert "workflow.tar.gz" in staged, staged  # what the worker pip-installs from --setup_file
    path = Path(staged["workflow.tar.gz"])
    assert path.name == "longctx-0.1.0.tar.gz"
    assert dataflow_job.tmp in path.parents
    with tarfile.open(path) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
        pkg_info = tar.extractfile("longctx-0.1.0/PKG-INFO").read().decode()
    for pkg in ("curation", "pipelines", "qa_synth", "training"):
        local = {str(p.relative_to(REPO)) for p in (REPO / pkg).rglob("*.py") if "__pycache__" not in p.parts}
        assert local and local <= members, f"{pkg}: not staged: {sorted(local - members)}"
    assert {"pipelines/books.py", "pipelines/packing.py", "pyproject.toml", "setup.py"} <= members
    assert re.search(r"^Name: longctx$", pkg_info, re.M)
    # Nothing of the working tree that workers must not download: venv, outputs, sample data.
    for prefix in (".venv/", "out/", "data/"):
        assert not any(m.startswith(prefix) for m in members), prefix
    assert path.stat().st_size < 5 * 1024 * 1024


def test_dataflow_job_environment(dataflow_job):
    """The Dataflow Job's worker pool as the service would get it: our image, GPU option, runner
    v2, and the staged sdist among its packages."""
    from apache_beam.runners.dataflow.internal import apiclient
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2

    job = dataflow_job.job
    assert job.proto.name == "longctx-books-graph-test"
    envs = dataflow_job.proto.components.environments
    assert envs
    for env in envs.values():
        assert env.urn == common_urns.environments.DOCKER.urn
        assert beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image == WORKER_IMAGE

    staged = _staged(dataflow_job.proto)
    environment = apiclient.Environment(
        packages=sorted(staged),
        options=job.options,
        environment_version=apiclient._FNAPI_ENVIRONMENT_MAJOR_VERSION,
        proto_pipeline_staged_url=f"{job.google_cloud_options.staging_location}/pipeline.pb",
        proto_pipeline=dataflow_job.proto,
    ).proto
    (pool,) = environment.worker_pools
    assert pool.worker_harness_container_image == WORKER_IMAGE
    assert {i.container_image for i in pool.sdk_harness_container_images} == {WORKER_IMAGE}
    assert pool.machine_type == "g2-standard-8"
    assert pool.autoscaling_settings.max_num_workers == 4
    packages = {p.name: p.location for p in pool.packages}
    assert re.fullmatch(r"storage\.googleapis\.com/bucket/staging/(.+/)?workflow\.tar\.gz", packages.get("workflow.tar.gz", "")), packages
    assert GPU_SERVICE_OPTION in environment.service_options
    assert "use_runner_v2" in environment.experiments
    assert environment.version["job_type"] == "FNAPI_BATCH"
    options = dict(environment.sdk_pipeline_options["options"])
    assert options["setup_file"] == str(REPO / "setup.py")
    assert options["sdk_container_image"] == WORKER_IMAGE
    job.proto.environment = environment
    assert '"FNAPI_BATCH"' in job.json()  # the whole job serialises as the API request would


# --------------------------------------------------------------------------------------------
# The custom worker image (docker cannot run here: check what must match)
# --------------------------------------------------------------------------------------------


def _dockerfile_base_image(text: str) -> str:
    """The FROM image with the ARG defaults declared before it substituted."""
    args: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if m := re.match(r"ARG\s+(\w+)=(\S*)$", line):
            args[m.group(1)] = m.group(2).strip("\"'")
        elif m := re.match(r"FROM\s+(\S+)", line):
            return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda v: args[v.group(1) or v.group(2)], m.group(1))
    raise AssertionError("no FROM line")


def test_worker_image_matches_installed_beam_and_python():
    import apache_beam

    text = DOCKERFILE.read_text()
    base = _dockerfile_base_image(text)
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert base == f"apache/beam_python{py}_sdk:{apache_beam.__version__}", (
        f"{DOCKERFILE.name} builds on {base}, but jobs are launched with Beam {apache_beam.__version__} "
        f"on Python {py}: the worker image must match both"
    )
    assert re.search(r'^ENTRYPOINT \["/opt/apache/beam/boot"\]$', text, re.M)
    # Installing the package must not move Beam off the base image's version (the boot binary's).
    assert '"apache-beam[gcp]==${BEAM_VERSION}"' in text
    assert re.search(r"^ARG BEAM_VERSION$", text.split("FROM", 1)[1], re.M), "BEAM_VERSION re-declared after FROM"


def test_worker_image_extras_exist_in_pyproject():
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    m = re.search(r"^ARG EXTRAS=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert m, "ARG EXTRAS=... default"
    wanted = set(m.group(1).split(","))
    assert "gcp" in wanted and wanted <= extras, f"unknown extras: {wanted - extras}"
    # Every package directory the project ships is copied into the image.
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    assert packages
    for pkg in packages:
        assert re.search(rf"^COPY {pkg}/ {pkg}/$", DOCKERFILE.read_text(), re.M), pkg


def test_dockerfile_base_image_parser():
    text = "ARG PY=3.11\nARG V=2.77.0\nFROM apache/beam_python${PY}_sdk:${V}\nARG EXTRAS=gcp\n"
    assert _dockerfile_base_image(text) == "apache/beam_python3.11_sdk:2.77.0"
