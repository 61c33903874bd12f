"""checkov over the Kubernetes manifests of deploy/k8s/ as a cluster would receive them, without a cluster.

Each overlay is rendered with `kubectl kustomize` (the same render as test_k8s_manifests.py) and the rendered file
is given to checkov's kubernetes framework (`checkov --file`), rather than to its kustomize framework: this way
checkov sees exactly the objects kubernetes-validate checks, rendered by the kubectl the suite already depends on,
and nothing depends on which kustomize binary checkov would look for. `--skip-download` keeps it offline (no guideline
or policy download from the vendor's platform; measured to give the same results with no network at all).

Rules:
- no check fails in either overlay;
- a check we do not satisfy is skipped on the object itself, with the annotation form checkov reads
  (`metadata.annotations` `checkov.io/skipN: CKV_K8S_xx=reason`), so its reason stands next to the object, and every
  skip has a reason;
- every skip is needed: with the skip annotations removed, exactly the skipped checks fail, and nothing else changes;
- the run is real: a privileged pod written here is reported failed by the same helper, and a skip annotation on it
  moves that check from failed to skipped.

checkov is a pinned version in a virtualenv of its own (apgms.devservers.ensure_checkov, installed by `python -m
apgms.devservers`); when it is missing the tests fail, they do not skip.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_k8s_manifests import OVERLAYS, Obj, objects_of, render

from apgms.devservers import CHECKOV_VERSION, DevServerError, ensure_checkov, ensure_kubectl

CHECKOV_TIMEOUT_S = 120
SKIP_ANNOTATION = "checkov.io/skip"
# What checkov records as the reason of a skip annotation that gives none.
NO_REASON = "No comment provided"
MIN_REASON_CHARS = 40
PRIVILEGED_CHECK = "CKV_K8S_16"  # "Container should not be privileged"
# Kubernetes checks only, JSON without code blocks, and offline.
CHECKOV_ARGS = ("--framework", "kubernetes", "--output", "json", "--compact", "--skip-download")


@dataclass(frozen=True)
class Finding:
    """One check on one resource (checkov names it Kind.namespace.name); `reason` is a skip's justification."""

    check_id: str
    resource: str
    reason: str = ""


@dataclass(frozen=True)
class CheckovReport:
    """checkov's results for one file."""

    passed: frozenset[Finding]
    failed: frozenset[Finding]
    skipped: frozenset[Finding]


@dataclass(frozen=True)
class CheckovRun:
    """One checkov run over several files: each file's results, and what checkov says of the whole run."""

    version: str
    resources: int  # objects read over all the files (checkov counts each workload's containers apart, too)
    reports: dict[Path, CheckovReport]  # by the file's absolute path


def parse_run(document: Any, manifests: Sequence[Path]) -> CheckovRun:
    """checkov's JSON output for one framework. A run that parsed nothing prints no `results` (or a list, for
    several frameworks): both are refused here rather than read as "nothing failed"."""
    assert isinstance(document, dict) and "results" in document, f"not one framework's report: {document!r:.500}"
    summary, results = document["summary"], document["results"]
    assert summary["parsing_errors"] == 0, f"checkov could not parse: {results.get('parsing_errors')}"
    paths = [m.absolute() for m in manifests]
    for key in ("passed", "failed", "skipped"):
        listed = results.get(f"{key}_checks", [])
        assert len(listed) == summary[key], f"{key}: the results disagree with {summary}"
        assert {Path(r["file_abs_path"]) for r in listed} <= set(paths), f"{key}: results of a file not given"

    def findings(path: Path, key: str) -> frozenset[Finding]:
        return frozenset(
            Finding(r["check_id"], r["resource"], r["check_result"].get("suppress_comment") or "")
            for r in results.get(key, [])
            if Path(r["file_abs_path"]) == path
        )

    reports = {
        path: CheckovReport(*(findings(path, f"{key}_checks") for key in ("passed", "failed", "skipped")))
        for path in paths
    }
    return CheckovRun(summary["checkov_version"], summary["resource_count"], reports)


def run_checkov(checkov: Path, manifests: Sequence[Path]) -> CheckovRun:
    """checkov's kubernetes checks over files of Kubernetes objects, in one run (most of a run's time is checkov's
    start-up, about 2 s of CPU). Exit code 0 is no failure and 1 is some; anything else is checkov's own error."""
    files = [arg for manifest in manifests for arg in ("--file", str(manifest.absolute()))]
    result = subprocess.run(
        [str(checkov), *CHECKOV_ARGS, *files],
        capture_output=True,
        text=True,
        timeout=CHECKOV_TIMEOUT_S,
        check=False,
    )
    assert result.returncode in (0, 1), f"checkov exited {result.returncode}:\n{result.stderr[-2000:]}"
    run = parse_run(json.loads(result.stdout), manifests)
    any_failed = any(report.failed for report in run.reports.values())
    assert (result.returncode == 1) == any_failed, f"exit code {result.returncode}, failures: {any_failed}"
    return run


def without_skips(objects: list[Obj]) -> list[Obj]:
    """The objects with every checkov skip annotation taken out (the rest unchanged)."""
    stripped = []
    for obj in objects:
        metadata = dict(obj["metadata"])
        annotations = {k: v for k, v in metadata.get("annotations", {}).items() if not k.startswith(SKIP_ANNOTATION)}
        metadata["annotations"] = annotations
        stripped.append({**obj, "metadata": metadata})
    return stripped


def listing(findings: Iterable[Finding]) -> str:
    return "\n".join(f"  {f.check_id} {f.resource} {f.reason}".rstrip() for f in sorted(findings, key=str))


@pytest.fixture(scope="module")
def checkov() -> Path:
    try:
        return ensure_checkov(install=False)
    except DevServerError as error:
        pytest.fail(str(error))


@dataclass(frozen=True)
class Overlays:
    """Both overlays as rendered, and checkov's results for each as rendered and without its skip annotations."""

    objects: dict[str, list[Obj]]
    run: CheckovRun
    files: dict[tuple[str, bool], Path]  # (overlay, skips kept) -> the file checkov read

    def report(self, name: str, *, skips: bool = True) -> CheckovReport:
        return self.run.reports[self.files[(name, skips)]]


@pytest.fixture(scope="module")
def overlays(checkov: Path, tmp_path_factory: pytest.TempPathFactory) -> Overlays:
    try:
        kubectl = ensure_kubectl(install=False)
    except DevServerError as error:
        pytest.fail(str(error))
    directory = tmp_path_factory.mktemp("checkov")
    objects, files = {}, {}
    for name in OVERLAYS:
        rendered = render(kubectl, name)
        objects[name] = objects_of(rendered)
        files[(name, True)] = directory / f"{name}.yaml"
        files[(name, True)].write_text(rendered)
        files[(name, False)] = directory / f"{name}-without-skips.yaml"
        files[(name, False)].write_text(yaml.safe_dump_all(without_skips(objects[name])))
    return Overlays(objects, run_checkov(checkov, list(files.values())), files)


def test_checkov_is_the_pinned_version_and_reads_every_object(overlays: Overlays) -> None:
    assert overlays.run.version == CHECKOV_VERSION
    # Each file once with its skips and once without: the same objects. checkov counts each object and, apart,
    # each container of a workload.
    expected = 0
    for objects in overlays.objects.values():
        workloads = [o for o in objects if o["kind"] in ("Deployment", "Job")]
        expected += 2 * (len(objects) + sum(len(o["spec"]["template"]["spec"]["containers"]) for o in workloads))
    assert overlays.run.resources == expected


@pytest.mark.parametrize("name", OVERLAYS)
def test_checkov_checked_each_workload_service_and_ingress(overlays: Overlays, name: str) -> None:
    report = overlays.report(name)
    checked = {f.resource for f in report.passed | report.failed | report.skipped}
    for obj in overlays.objects[name]:
        if obj["kind"] in ("Deployment", "Job", "Service", "Ingress", "ServiceAccount"):
            resource = f"{obj['kind']}.{obj['metadata']['namespace']}.{obj['metadata']['name']}"
            assert resource in checked, f"overlays/{name}: checkov checked nothing on {resource}"


@pytest.mark.parametrize("name", OVERLAYS)
def test_no_check_fails_and_every_skip_gives_its_reason(overlays: Overlays, name: str) -> None:
    report = overlays.report(name)
    assert not report.failed, f"overlays/{name}: checkov checks failed:\n{listing(report.failed)}"
    vague = {f for f in report.skipped if f.reason == NO_REASON or len(f.reason) < MIN_REASON_CHARS}
    assert not vague, f"overlays/{name}: skips without a real reason:\n{listing(vague)}"


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_skip_is_needed(overlays: Overlays, name: str) -> None:
    """Without the skip annotations, the checks that were skipped fail, each on the same resource, and no other
    result changes: no skip hides a check that would pass, and none covers more than it says."""
    report, unskipped = overlays.report(name), overlays.report(name, skips=False)
    skipped = {(f.check_id, f.resource) for f in report.skipped}
    failing = {(f.check_id, f.resource) for f in unskipped.failed}
    assert failing == skipped, f"overlays/{name}: differ without skips: {failing ^ skipped}"
    assert unskipped.passed == report.passed and not unskipped.skipped


def bad_pod(annotations: dict[str, str]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bad", "namespace": "default", "annotations": annotations},
        "spec": {"containers": [{"name": "bad", "image": "busybox:1.36", "securityContext": {"privileged": True}}]},
    }


def test_the_same_helper_reports_a_privileged_pod_failed_and_reads_a_skip_annotation(
    checkov: Path, tmp_path: Path
) -> None:
    reason = "a privileged pod on purpose, to see the skip annotation read"
    plain, annotated = tmp_path / "bad.yaml", tmp_path / "bad-annotated.yaml"
    plain.write_text(yaml.safe_dump(bad_pod({})))
    annotated.write_text(yaml.safe_dump(bad_pod({f"{SKIP_ANNOTATION}1": f"{PRIVILEGED_CHECK}={reason}"})))
    run = run_checkov(checkov, [plain, annotated])
    failed = run.reports[plain.absolute()].failed
    assert Finding(PRIVILEGED_CHECK, "Pod.default.bad") in failed, listing(failed)
    skipped = run.reports[annotated.absolute()].skipped
    assert Finding(PRIVILEGED_CHECK, "Pod.default.bad", reason) in skipped, listing(skipped)
    assert {f.check_id for f in run.reports[annotated.absolute()].failed} == {f.check_id for f in failed} - {
        PRIVILEGED_CHECK
    }
