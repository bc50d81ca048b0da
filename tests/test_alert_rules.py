"""deploy/prometheus and deploy/grafana: promtool accepts them, the alert unit tests
pass, and the dashboard and alerts use only metrics that virtmesh really exports.

promtool comes with Debian's ``prometheus`` package, which tools/install-deps.sh
installs (``make test`` runs it): its absence is a failure, not a skip.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import shutil
import subprocess
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from services.common import registry
from services.supervisor import SERVICES, metrics_addresses, write_targets
from tests.conftest import ROOT

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "virtmesh-dashboard.json"

#: the metrics the observability issue promises; the code must export every one
CONTRACT = {
    "grpc_server_started_total", "grpc_server_handled_total", "grpc_server_handling_seconds",
    "grpc_server_msg_received_total", "grpc_server_msg_sent_total",
    "virtmesh_libvirt_connected", "virtmesh_libvirt_reconnects_total",
    "virtmesh_libvirt_call_seconds", "virtmesh_event_subscribers", "virtmesh_build_info",
    "virtmesh_gateway_upstream_requests_total", "virtmesh_gateway_upstream_seconds",
    "virtmesh_gateway_upstream_unavailable_total", "virtmesh_gateway_auth_failures_total",
    "virtmesh_gateway_activations_total",
    "libvirt_domain_info_cpu_time_seconds_total", "libvirt_domain_info_virtual_cpus",
    "libvirt_domain_info_maximum_memory_bytes", "libvirt_domain_info_memory_usage_bytes",
    "libvirt_domain_info_vstate",
    "libvirt_domain_block_stats_read_bytes_total", "libvirt_domain_block_stats_write_bytes_total",
    "libvirt_domain_block_stats_read_requests_total",
    "libvirt_domain_block_stats_write_requests_total",
    "libvirt_domain_interface_stats_receive_bytes_total",
    "libvirt_domain_interface_stats_transmit_bytes_total",
    "libvirt_domain_interface_stats_receive_packets_total",
    "libvirt_domain_interface_stats_transmit_packets_total",
    "virtmesh_guest_stats_age_seconds", "virtmesh_guest_stats_scrape_seconds",
    "virtmesh_guest_stats_timeouts_total",
}
#: series Prometheus itself adds to every target
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
             "scrape_samples_post_metric_relabeling", "scrape_series_added"}
METRICS_MODULES = ("services/**/metrics.py", "gateway/**/metrics.py")


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool") or ("/usr/bin/promtool"
                                         if Path("/usr/bin/promtool").exists() else None)
    if found is None:
        pytest.fail("promtool is missing: install Debian's prometheus package "
                    "(tools/install-deps.sh does, and `make test` runs it)")
    return found


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_prometheus_config_with_targets_from_the_supervisor(promtool: str,
                                                            tmp_path: Path) -> None:
    """The shipped config finds ./.virtmesh/targets.json relative to itself, and
    promtool accepts the file the supervisor writes."""
    config_dir = tmp_path / "deploy" / "prometheus"
    config_dir.mkdir(parents=True)
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(PROMETHEUS_DIR / name, config_dir / name)
    (tmp_path / ".virtmesh").mkdir()
    targets = tmp_path / ".virtmesh" / "targets.json"
    write_targets(targets, metrics_addresses(["gateway", *SERVICES], 0))
    # run from elsewhere: relative paths in the config are relative to the config file
    checked = run(promtool, "check", "config", str(config_dir / "prometheus.yml"),
                  cwd=tmp_path / ".virtmesh")
    output = checked.stdout + checked.stderr
    assert checked.returncode == 0, output
    assert "WARNING" not in output, output  # the targets file was found and is valid
    assert "1 rule files found" in output, output

    targets.write_text('{"targets": ["127.0.0.1:9650"]}')  # not a list of groups
    broken = run(promtool, "check", "config", str(config_dir / "prometheus.yml"))
    assert broken.returncode != 0, "promtool does not look at the targets file"


def test_prometheus_config_as_shipped(promtool: str) -> None:
    checked = run(promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alert_rules_check(promtool: str) -> None:
    checked = run(promtool, "check", "rules", str(PROMETHEUS_DIR / "alerts.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alert_rules_unit_tests(promtool: str) -> None:
    tested = run(promtool, "test", "rules", "alerts_test.yml", cwd=PROMETHEUS_DIR)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_unit_tests() -> None:
    alerts = set(re.findall(r"^\s*- alert:\s*(\S+)", (PROMETHEUS_DIR / "alerts.yml").read_text(),
                            re.M))
    tested = (PROMETHEUS_DIR / "alerts_test.yml").read_text()
    assert len(alerts) >= 5
    for alert in alerts:
        fires = re.search(rf"alertname: {alert}\n\s*exp_alerts:\n\s*- exp_labels", tested)
        quiet = re.search(rf"alertname: {alert}\n\s*exp_alerts: \[\]", tested)
        assert fires and quiet, f"{alert}: alerts_test.yml needs a case where it fires " \
                                "and one where it does not"


# --- metric names -----------------------------------------------------------------------

def exported_metric_names() -> set[str]:
    """Every series name virtmesh's code can export, from its metric definitions.

    Each ``metrics.py`` module's collectors are rendered in Prometheus' text format
    (families with no samples yet included), and each collector class defined there
    that takes the libvirt connection is instantiated with a disconnected stand-in.
    """
    registry = CollectorRegistry(auto_describe=False)
    seen: set[int] = set()
    offline = types.SimpleNamespace(connected=False, reconnects=0, conn=None)
    paths = sorted(path for pattern in METRICS_MODULES for path in ROOT.glob(pattern))
    assert paths, "no metrics modules found"
    for path in paths:
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for value in vars(module).values():
            # MRO checks: isinstance() trips over typing.Protocol classes in the module
            if isinstance(value, type):
                if (Collector in value.__mro__ and value.__module__ == module.__name__
                        and inspect.signature(value).parameters):  # takes a connection
                    registry.register(value(offline))
            elif (Collector in type(value).__mro__ and CollectorRegistry not in type(value).__mro__
                  and id(value) not in seen):
                seen.add(id(value))
                registry.register(value)
    names = set()
    for match in re.finditer(r"^# TYPE (\S+) (\S+)$", generate_latest(registry).decode(), re.M):
        name, kind = match.groups()
        names.add(name)
        if kind in ("histogram", "summary"):
            names.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return names


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "bool", "offset", "inf", "nan"}


def promql_metrics(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (Grafana's $variables allowed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w$.])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        word = match.group()
        if expr[match.end():].lstrip().startswith("(") or word.lower() in _KEYWORDS:
            continue  # a function or an operator
        names.add(word)
    return names


def test_promql_metrics() -> None:
    assert promql_metrics(
        'histogram_quantile(0.99, sum by (service, le) (rate(grpc_server_handling_seconds_bucket'
        '{job="$job", grpc_type="unary"}[$__rate_interval]))) / on (service) group_left '
        'sum without (grpc_code) (up) > bool 0.5 and virtmesh_libvirt_connected') == \
        {"grpc_server_handling_seconds_bucket", "up", "virtmesh_libvirt_connected"}


def test_code_exports_the_promised_metrics() -> None:
    missing = CONTRACT - exported_metric_names()
    assert not missing, f"metrics the issue promises but no metrics.py exports: {sorted(missing)}"


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield item
        yield from panels(item.get("panels", []))


def test_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    exported = exported_metric_names() | SYNTHETIC
    used: set[str] = set()
    queries = [p for p in panels(dashboard["panels"]) if p.get("type") != "row"]
    assert len(queries) >= 10
    for panel in queries:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"{panel['title']}: no queries"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            names = promql_metrics(target["expr"])
            assert names, f"{panel['title']}: no metric in {target['expr']!r}"
            unknown = names - exported
            assert not unknown, f"{panel['title']}: {sorted(unknown)} are not exported"
            used |= names
    for variable in variables.values():
        if variable["type"] == "query":
            metric = re.match(r"label_values\((\w+)", variable["query"]["query"])
            assert metric and metric.group(1) in exported, variable["name"]
    # what the issue asks the dashboard to show
    for wanted in ("grpc_server_handled_total", "grpc_server_handling_seconds_bucket",
                   "libvirt_domain_info_cpu_time_seconds_total",
                   "libvirt_domain_info_memory_usage_bytes",
                   "libvirt_domain_block_stats_read_bytes_total",
                   "libvirt_domain_interface_stats_receive_bytes_total"):
        assert wanted in used, f"the dashboard does not show {wanted}"


def alert_expressions() -> dict[str, str]:
    """alert name -> expr, read from alerts.yml (a plain `expr:` or a `|` block)."""
    found: dict[str, str] = {}
    lines = (PROMETHEUS_DIR / "alerts.yml").read_text().splitlines()
    alert = ""
    for index, line in enumerate(lines):
        if match := re.match(r"\s*- alert:\s*(\S+)", line):
            alert = match.group(1)
        elif match := re.match(r"(\s*)expr:\s*(.*)$", line):
            indent, value = len(match.group(1)), match.group(2)
            if value in ("|", ">", "|-", ">-"):
                block = []
                for following in lines[index + 1:]:
                    if following.strip() and len(following) - len(following.lstrip()) <= indent:
                        break
                    block.append(following)
                value = "\n".join(block)
            found[alert] = value
    return found


def test_alerts_use_exported_metrics() -> None:
    exported = exported_metric_names() | SYNTHETIC
    expressions = alert_expressions()
    assert len(expressions) >= 5
    for alert, expr in expressions.items():
        names = promql_metrics(expr)
        assert names and names <= exported, f"{alert}: {sorted(names - exported)} not exported"


def test_host_libvirt_alert_watches_the_services_that_use_the_host_daemon() -> None:
    """VirtmeshHostLibvirtDown names exactly the services whose driver libvirt cannot
    embed (their default URI is the host daemon's), so a new one is not missed."""
    match = re.search(r'service=~"([^"]+)"', alert_expressions()["VirtmeshHostLibvirtDown"])
    assert match, "VirtmeshHostLibvirtDown does not select services by name"
    host_daemon = {spec.name for spec in registry.specs() if not spec.embedded}
    assert set(match[1].split("|")) == host_daemon
