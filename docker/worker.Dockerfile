# Custom Dataflow worker (SDK harness) image for longctx.
#
# Beam's own Python SDK image for the SAME Beam version and the SAME Python minor version as the
# environment that launches the job (tests/test_dataflow_graph.py checks both against the
# installed apache_beam and interpreter), with this package and its extras preinstalled, so
# workers start without building/installing an sdist and can carry heavy extras (JAX, video,
# vLLM) that --setup_file would reinstall on every worker.
#
# Build from the repository root (the build context must be the repo, not docker/):
#
#   docker build -f docker/worker.Dockerfile -t REGION-docker.pkg.dev/PROJECT/longctx/worker:0.1 .
#   docker push REGION-docker.pkg.dev/PROJECT/longctx/worker:0.1
#
# Optional build args:
#   --build-arg EXTRAS=gcp,train           extras of pyproject.toml to install (comma separated);
#                                          add e.g. video / vllm once those extras exist there
#   --build-arg TORCH=cpu                  also install torch==TORCH_VERSION, CPU-only build (for
#                                          the Hugging Face conversion code); a bare `pip install
#                                          torch` on Linux pulls the CUDA build (several GB), which
#                                          is what TORCH=cuda does (GPU workers)
#   --build-arg EXTRA_PIP="jax[cuda12]"    any further pip requirements (e.g. JAX for GPU workers)
#
# Run a job on it (the launching environment needs `pip install -e '.[gcp]'`, same Beam and Python):
#
#   longctx books ... --runner DataflowRunner --project PROJECT --region us-central1 \
#       --temp_location gs://BUCKET/tmp \
#       --sdk_container_image REGION-docker.pkg.dev/PROJECT/longctx/worker:0.1 \
#       --experiments=use_runner_v2
#
# The package is already in the image, so --setup_file is not needed; pass it anyway
# (--setup_file ./setup.py) to ship uncommitted code changes on top of the image.
#
# GPU workers (e.g. vLLM / JAX on one L4 per worker): build with the GPU packages in EXTRA_PIP and
# add
#   --machine_type g2-standard-8 \
#   --dataflow_service_options="worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
# (Dataflow installs the NVIDIA driver on the host; the CUDA libraries come from the pip wheels.)

ARG PY_VERSION=3.11
ARG BEAM_VERSION=2.77.0
FROM apache/beam_python${PY_VERSION}_sdk:${BEAM_VERSION}

# ARGs declared before FROM are not visible after it unless re-declared.
ARG BEAM_VERSION
ARG EXTRAS=gcp,train
ARG TORCH=none
ARG TORCH_VERSION=2.13.0
ARG EXTRA_PIP=""

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /opt/longctx

# Only what the package build needs (not .venv/, out/, data/): metadata first, then the code.
COPY pyproject.toml setup.py README.md ./
COPY curation/ curation/
COPY evals/ evals/
COPY inspection/ inspection/
COPY longctx/ longctx/
COPY pipelines/ pipelines/
COPY qa_synth/ qa_synth/
COPY training/ training/

# Pin Beam to the base image's version so no extra can move it away from the boot binary's SDK.
RUN set -eux; \
    case "${TORCH}" in \
      none) ;; \
      cpu) pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu ;; \
      cuda) pip install --no-cache-dir "torch==${TORCH_VERSION}" ;; \
      *) echo "TORCH must be none, cpu or cuda" >&2; exit 1 ;; \
    esac; \
    pip install --no-cache-dir "/opt/longctx[${EXTRAS}]" "apache-beam[gcp]==${BEAM_VERSION}" ${EXTRA_PIP}; \
    python -c "import apache_beam, curation, pipelines, qa_synth; assert apache_beam.__version__ == '${BEAM_VERSION}', apache_beam.__version__"

# Run from / so workers import the installed package, not the copied source tree.
WORKDIR /
# Beam's SDK harness boot program, as in the base image: Dataflow starts it with its own arguments.
ENTRYPOINT ["/opt/apache/beam/boot"]
