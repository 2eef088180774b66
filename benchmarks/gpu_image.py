"""The GPU machine's Python image, and an import guard that emulates it on any machine.

:data:`GPU_IMAGE_PACKAGES`: the distributions the GPU machine's interpreter holds (Python
3.12, torch 2.11 with CUDA 13, numpy 2.x; no Triton server or client, no pydicom, nibabel
or python-rapidjson). :func:`guard_imports` makes an interpreter refuse every module whose
distribution is neither there nor in the bundle (:mod:`covidct.benchmarks.gpu_bundle`), so a dry
run of ``benchmarks/gpu_check.sh`` on a development machine fails where the GPU machine
would. Only the standard library is imported.
"""

from __future__ import annotations

import re
import sys

_GPU_IMAGE_NAMES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp
"""
GPU_IMAGE_PACKAGES = frozenset(_GPU_IMAGE_NAMES.split())
"""Python packages of the GPU machine's image (Python 3.12, torch 2.11 + CUDA 13, numpy 2.5;
no Triton server or client, no pydicom, nibabel or python-rapidjson)."""



def normalize(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


PROJECT_DISTRIBUTION = "covidct-triton"


class ImageImportGuard:
    """A ``sys.meta_path`` finder that refuses top-level modules whose distribution is not in
    ``allowed`` (as if only those packages were installed): a dry run here then fails where
    the GPU machine would. Modules no installed distribution owns (the standard library,
    the checkout) pass."""

    def __init__(self, allowed: frozenset[str]) -> None:
        import importlib.metadata

        self.allowed = frozenset(normalize(n) for n in allowed)
        self.owners = {top: frozenset(normalize(d) for d in dists)
                       for top, dists in importlib.metadata.packages_distributions().items()}

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        owners = self.owners.get(name.partition(".")[0], frozenset())
        if owners and not owners & self.allowed:
            raise ModuleNotFoundError(f"No module named {name!r} (its distribution {', '.join(sorted(owners))} "
                                      "is neither on the GPU machine nor in the bundle)", name=name)


def guard_imports(allowed: frozenset[str] | None = None) -> ImageImportGuard:
    """Install :class:`ImageImportGuard` first on ``sys.meta_path``; default ``allowed``: the GPU
    image, the bundle and this project. Returns the guard (remove it from ``sys.meta_path`` to undo)."""
    if allowed is None:
        from covidct.benchmarks.gpu_bundle_packages import PACKAGES

        allowed = GPU_IMAGE_PACKAGES | {p.name for p in PACKAGES} | {PROJECT_DISTRIBUTION}
    guard = ImageImportGuard(allowed)
    sys.meta_path.insert(0, guard)
    return guard
