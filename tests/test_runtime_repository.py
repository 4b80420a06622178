"""The live model repository: version policies, version states, rescans that load before they
serve and drain before they unload, failure isolation, and model control (none, poll, explicit)."""

from __future__ import annotations

import random
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import write_model

from stn_serve.contract import CONFIG_FILE
from stn_serve.errors import InvalidInputError, NotAllowedError, NotFoundError, NotReadyError
from stn_serve.runtime import (
    ModelControl,
    ModelControlOptions,
    ModelRepository,
    OnnxModel,
    RuntimeOptions,
    State,
    open_version,
)

CPU = RuntimeOptions(device="cpu")
IMAGES = np.zeros((2, 1, 28, 28), np.float32)


def repository(root: Path, **kwargs) -> ModelRepository:
    return ModelRepository(root, CPU, **kwargs)


def states(repo: ModelRepository, name: str = "m") -> dict[int, tuple[State, str]]:
    return {s.version: (s.state, s.reason) for s in repo.status(name)}


def set_policy(root: Path, name: str, policy: str, extra: str = "") -> None:
    (root / name / CONFIG_FILE).write_text(f"{extra}version_policy {{ {policy} }}\n")


def publish(root: Path, name: str, version: int, seed: int = 0) -> Path:
    """Add a version the way export does: written aside, then renamed into place at once."""
    staging = write_model(root / name, f".staging-{version}", version, seed=seed)
    target = root / name / str(version)
    # write_model names the model after its folder; this one belongs to `name`.
    (staging / "model.json").write_text(
        (staging / "model.json")
        .read_text()
        .replace(f'"name": ".staging-{version}"', f'"name": "{name}"')
    )
    (staging / "model.json").parent.rename(target)
    shutil.rmtree(root / name / f".staging-{version}", ignore_errors=True)
    return target


def batch_one_only(directory: Path) -> None:
    """Make the graph flatten its input to a batch of 1 through a shape computed from the pixel
    values, which shape inference cannot see: it loads, runs at batch 1, and fails in ONNX
    Runtime at any other batch (as a graph with a hard-coded batch does)."""
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(directory / "model.onnx")
    graph = model.graph
    first = next(node for node in graph.node if node.op_type == "Reshape")
    first.input[1] = "value_dependent_shape"
    graph.initializer.append(numpy_helper.from_array(np.array([1, -1], np.int64), "one_row"))
    nodes = [
        helper.make_node("ReduceMin", ["image"], ["lowest"], keepdims=0),
        helper.make_node("Floor", ["lowest"], ["floor"]),  # 0 for pixels in [0, 1)
        helper.make_node("Cast", ["floor"], ["zero"], to=TensorProto.INT64),
        helper.make_node("Add", ["one_row", "zero"], ["value_dependent_shape"]),
    ]
    for node in reversed(nodes):
        graph.node.insert(0, node)
    onnx.save(model, directory / "model.onnx")


def wait_until(condition, timeout: float = 10.0) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "condition not met in time"
        time.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture
def two_versions(tmp_path) -> Path:
    write_model(tmp_path, "m", 1, seed=1)
    write_model(tmp_path, "m", 2, seed=2)
    return tmp_path


# Version policies and states ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "served"),
    [("latest { num_versions: 1 }", [2]), ("specific { versions: [1] }", [1]), ("all { }", [1, 2])],
)
def test_version_policy_chooses_what_is_loaded(two_versions, policy, served):
    set_policy(two_versions, "m", policy)
    repo = repository(two_versions).load()
    assert repo.versions("m") == served
    assert repo.get("m").version == served[-1]
    assert {v for v, (state, _) in states(repo).items() if state is State.READY} == set(served)


def test_without_config_every_version_is_served_newest_first(two_versions):
    repo = repository(two_versions).load()
    assert repo.versions("m") == [1, 2] and repo.get("m").version == 2
    assert repo.get("m", 1).version == 1


def test_a_broken_newest_version_leaves_the_one_before_serving(two_versions):
    set_policy(two_versions, "m", "latest { num_versions: 1 }")
    (two_versions / "m" / "2" / "model.onnx").write_bytes(b"not onnx")
    repo = repository(two_versions).load()
    assert repo.versions("m") == [1]
    state, reason = states(repo)[2]
    assert state is State.UNAVAILABLE and "cannot load" in reason
    assert list(repo.failures) == [two_versions / "m" / "2"]


# Rescans ------------------------------------------------------------------------------------------


def test_a_new_version_answers_only_once_loaded_and_warmed(tmp_path, monkeypatch):
    write_model(tmp_path, "m", 1)
    repo = repository(tmp_path).load()
    release = threading.Event()
    original = OnnxModel.load

    def slow_load(self):
        if self.directory.name == "2":
            assert release.wait(10)
        return original(self)

    monkeypatch.setattr(OnnxModel, "load", slow_load)
    publish(tmp_path, "m", 2)
    rescan = threading.Thread(target=repo.rescan)
    rescan.start()
    wait_until(lambda: states(repo).get(2, (None,))[0] is State.LOADING)
    assert repo.get("m").version == 1
    with pytest.raises(NotReadyError, match="version 2 is loading"):
        repo.acquire("m", 2)
    release.set()
    rescan.join(10)
    assert repo.get("m").version == 2 and repo.get("m").ready


def test_a_broken_new_version_never_replaces_the_serving_one_and_is_retried_when_fixed(
    tmp_path, monkeypatch
):
    write_model(tmp_path, "m", 1)
    set_policy(tmp_path, "m", "latest { }")
    repo = repository(tmp_path).load()
    broken = publish(tmp_path, "m", 2)
    (broken / "model.onnx").write_bytes(b"half a copy")
    attempts = []
    original = OnnxModel.load
    monkeypatch.setattr(
        OnnxModel, "load", lambda self: attempts.append(self.directory) or original(self)
    )
    repo.rescan()
    repo.rescan()  # unchanged files: not tried again
    assert attempts == [broken]
    assert repo.get("m").version == 1 and states(repo)[2][0] is State.UNAVAILABLE
    write_model(tmp_path, "m", 2, seed=5)  # the copy completes
    repo.rescan()
    assert repo.get("m").version == 2 and repo.versions("m") == [2]
    assert states(repo)[1] == (State.UNAVAILABLE, "unloaded") and not repo.failures


def test_a_changed_version_that_fails_to_reload_keeps_serving_what_it_loaded(tmp_path):
    write_model(tmp_path, "m", 1)
    repo = repository(tmp_path).load()
    served = repo.get("m", 1)
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"overwritten badly")
    repo.rescan()
    assert repo.get("m", 1) is served and served.predict(IMAGES)["logits"].shape == (2, 10)
    assert states(repo)[1][0] is State.READY and tmp_path / "m" / "1" in repo.failures


def test_a_changed_version_is_reloaded_and_the_old_session_drained(tmp_path):
    write_model(tmp_path, "m", 1, seed=1)
    repo = repository(tmp_path).load()
    old = repo.acquire("m", 1)
    write_model(tmp_path, "m", 1, seed=2)
    rescan = threading.Thread(target=repo.rescan)
    rescan.start()
    wait_until(lambda: repo.get("m", 1) is not old.model)
    assert old.model.predict(IMAGES)  # the lease still holds the old session
    assert rescan.is_alive()
    old.release()
    rescan.join(10)
    assert not old.model.ready and repo.get("m", 1).ready


def test_a_removed_version_is_drained_then_unloaded(two_versions):
    repo = repository(two_versions).load()
    lease = repo.acquire("m", 2)
    shutil.rmtree(two_versions / "m" / "2")
    rescan = threading.Thread(target=repo.rescan)
    rescan.start()
    wait_until(lambda: states(repo)[2][0] is State.UNLOADING)
    assert repo.get("m").version == 1  # new requests go to what is left
    with pytest.raises(NotReadyError):
        repo.acquire("m", 2)
    time.sleep(0.3)
    assert rescan.is_alive(), "unloading must wait for the request holding the version"
    assert lease.model.predict(IMAGES)["probabilities"].shape == (2, 10)
    lease.release()
    lease.release()  # a second release changes nothing
    rescan.join(10)
    assert not rescan.is_alive() and not lease.model.ready
    assert 2 not in states(repo) and repo.versions("m") == [1]


def test_draining_gives_up_after_its_timeout(two_versions, caplog):
    repo = repository(two_versions, drain_timeout_s=0.2).load()
    stuck = repo.acquire("m", 2)
    shutil.rmtree(two_versions / "m" / "2")
    start = time.monotonic()
    repo.rescan()
    assert time.monotonic() - start < 5
    assert not stuck.model.ready
    assert any(r.message == "model unloaded with requests still holding it" for r in caplog.records)
    with pytest.raises(NotReadyError):
        stuck.model.predict(IMAGES)


def test_a_removed_model_is_unloaded_and_a_new_one_loaded(two_versions):
    repo = repository(two_versions).load()
    shutil.rmtree(two_versions / "m")
    write_model(two_versions, "other", 1)
    repo.rescan()
    assert repo.names() == ["other"] and repo.status("m") == []
    with pytest.raises(NotFoundError, match="unknown model 'm'"):
        repo.get("m")


def test_a_version_that_begins_to_retire_is_never_handed_out(two_versions):
    """A request that picks a version whose session has begun to retire (the moment before the
    repository marks it) gets another version, or UNAVAILABLE, never a missing lease."""
    repo = repository(two_versions).load()
    retiring = repo._models["m"].versions[2].loaded  # that moment, held still for the test
    retiring.retire(timeout=0)
    with repo.acquire("m") as model:
        assert model.version == 1
    with pytest.raises(NotReadyError, match="version 2 is loading or unloading"):
        repo.acquire("m", 2)
    assert repo.versions("m") == [1] and repo.names() == ["m"]


def test_requests_racing_unloads_and_reloads_get_a_version_or_a_clear_refusal(two_versions):
    repo = repository(two_versions).load()
    control = ModelControl(repo, ModelControlOptions(mode="explicit"))
    unexpected, served = [], []
    stop = threading.Event()

    def requests():
        while not stop.is_set():
            try:
                with repo.acquire("m", random.choice([0, 2])) as model:
                    served.append(model.predict(IMAGES)["logits"].shape)
            except (NotFoundError, NotReadyError):
                pass
            except Exception as error:  # noqa: BLE001 - what the test looks for
                unexpected.append(error)

    threads = [threading.Thread(target=requests) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for seed in range(4):
            control.unload("m")
            control.load("m")
            write_model(two_versions, "m", 2, seed=10 + seed)  # reloaded in place
            repo.rescan()
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert unexpected == [] and served and set(served) == {(2, 10)}


def test_a_change_to_the_batching_settings_reloads_the_versions(two_versions):
    repo = repository(two_versions).load()
    before = {v: repo.get("m", v) for v in (1, 2)}
    set_policy(two_versions, "m", "all { }", extra="max_batch_size: 4\n")
    repo.rescan()
    after = {v: repo.get("m", v) for v in (1, 2)}
    assert all(after[v] is not before[v] and not before[v].ready for v in (1, 2))
    assert after[2].options.warmup_batch_sizes == (1, 4)
    set_policy(two_versions, "m", "specific { versions: [2] }", extra="max_batch_size: 4\n")
    repo.rescan()  # a policy change alone reloads nothing
    assert repo.versions("m") == [2] and repo.get("m", 2) is after[2]


def test_listeners_hear_of_each_change(two_versions):
    repo = repository(two_versions).load()
    heard = []
    # What a listener sees when it is called: the versions that answer, version 1's state.
    repo.add_listener(lambda name: heard.append((name, repo.versions(name), states(repo).get(1))))
    repo.add_listener(lambda name: 1 / 0)  # a broken listener stops nothing
    repo.rescan()
    assert heard == []
    shutil.rmtree(two_versions / "m" / "1")
    repo.rescan()
    # Once when version 1 stops answering (before its drain), once when it is gone.
    assert heard == [("m", [2], (State.UNLOADING, "")), ("m", [2], None)]
    write_model(two_versions, "m", 2, seed=7)  # changed files: a new session replaces the old
    repo.rescan()
    assert heard[2:] == [("m", [2], None)]


# Failure isolation --------------------------------------------------------------------------------


def test_an_onnx_runtime_error_in_warm_up_leaves_only_that_version_out(tmp_path):
    write_model(tmp_path, "digits", 1)
    bad = write_model(tmp_path, "m", 1)
    batch_one_only(bad)
    (tmp_path / "m" / CONFIG_FILE).write_text("max_batch_size: 4\n")  # warms up at 1 and 4
    repo = repository(tmp_path).load()
    assert repo.names() == ["digits"]
    assert "ONNXRuntimeError" in repo.failures[bad], repo.failures[bad]


def test_a_memory_error_in_warm_up_leaves_only_that_version_out(tmp_path, caplog):
    write_model(tmp_path, "digits", 1)
    bad = write_model(tmp_path, "m", 1)
    # An absurd batch size: warming up would need terabytes.
    (tmp_path / "m" / CONFIG_FILE).write_text("max_batch_size: 2000000000\n")
    repo = repository(tmp_path).load()
    assert repo.names() == ["digits"]
    assert repo.failures[bad].startswith("MemoryError")
    record = next(r for r in caplog.records if r.message == "model left out")
    assert record.path == str(bad) and record.exc_info


def test_odd_folder_names_are_reported_and_left_out(tmp_path, caplog):
    write_model(tmp_path, "m", 1)
    shutil.copytree(tmp_path / "m" / "1", tmp_path / "m" / "²")
    shutil.copytree(tmp_path / "m" / "1", tmp_path / "m" / "01")
    (tmp_path / "bad name").mkdir()
    repo = repository(tmp_path).load()
    assert repo.versions("m") == [1]
    skipped = {r.path: r.reason for r in caplog.records if r.message == "folder left out"}
    assert set(skipped) == {
        str(tmp_path / "m" / "²"),
        str(tmp_path / "m" / "01"),
        str(tmp_path / "bad name"),
    }
    assert "ASCII digits" in skipped[str(tmp_path / "m" / "²")]
    assert "without leading zeros" in skipped[str(tmp_path / "m" / "01")]
    caplog.clear()
    repo.rescan()
    assert not [r for r in caplog.records if r.message == "folder left out"], "reported once"


def test_a_refused_config_leaves_its_model_out_then_keeps_the_settings_read_before(tmp_path):
    write_model(tmp_path, "digits", 1)
    write_model(tmp_path, "m", 1)
    write_model(tmp_path, "m", 2)
    config = tmp_path / "m" / CONFIG_FILE
    config.write_text("version_policy { latest { } ")  # unterminated
    repo = repository(tmp_path).load()
    assert repo.names() == ["digits"]
    state, reason = states(repo)[0]
    assert state is State.UNAVAILABLE and "not a Triton model configuration" in reason
    config.write_text("version_policy { specific { versions: [1] } }")
    repo.rescan()
    assert repo.versions("m") == [1] and config not in repo.failures
    config.write_text("max_batch_size: [")
    repo.rescan()
    assert repo.versions("m") == [1] and config in repo.failures  # the policy read before holds


# Model control ------------------------------------------------------------------------------------


def test_explicit_mode_loads_and_unloads_only_on_request(two_versions):
    write_model(two_versions, "other", 1)
    repo = repository(two_versions)
    control = ModelControl(repo, ModelControlOptions(mode="explicit"))
    control.start()
    assert repo.names() == [] and repo.model_names() == ["m", "other"]
    control.load("m")
    assert repo.names() == ["m"] and repo.versions("m") == [1, 2]
    lease = repo.acquire("m")
    unloading = threading.Thread(target=control.unload, args=("m",))
    unloading.start()
    wait_until(lambda: states(repo)[2][0] is State.UNLOADING)
    lease.release()
    unloading.join(10)
    assert repo.names() == [] and states(repo) == {
        1: (State.UNAVAILABLE, "unloaded"),
        2: (State.UNAVAILABLE, "unloaded"),
    }
    with pytest.raises(NotFoundError, match="no model 'nope'"):
        control.load("nope")
    with pytest.raises(InvalidInputError, match="model name must be"):
        control.load("../m")
    (two_versions / "other" / "1" / "model.onnx").write_bytes(b"broken")
    with pytest.raises(
        Exception, match=r"model 'other': no version loaded \(version 1: .*cannot load"
    ):
        control.load("other")


@pytest.mark.parametrize(
    ("load_models", "served"), [(("*",), ["m", "other"]), (("other",), ["other"])]
)
def test_explicit_mode_loads_the_named_models_at_start(two_versions, load_models, served):
    write_model(two_versions, "other", 1)
    repo = repository(two_versions)
    ModelControl(repo, ModelControlOptions(mode="explicit", load_models=load_models)).start()
    assert repo.names() == served


@pytest.mark.parametrize("mode", ["none", "poll"])
def test_load_and_unload_requests_need_explicit_mode(two_versions, mode):
    control = ModelControl(repository(two_versions), ModelControlOptions(mode=mode, poll_s=60))
    control.start()
    try:
        for request in (control.load, control.unload):
            with pytest.raises(NotAllowedError, match=f"model control mode is '{mode}'"):
                request("m")
        assert control.request_rescan() is (mode == "poll")
    finally:
        control.stop(5)


def test_poll_mode_serves_a_copied_version_within_two_poll_periods(tmp_path):
    write_model(tmp_path, "m", 1)
    poll_s = 1.0
    repo = repository(tmp_path)
    control = ModelControl(repo, ModelControlOptions(mode="poll", poll_s=poll_s))
    control.start()
    try:
        publish(tmp_path, "m", 2)
        elapsed = wait_until(lambda: repo.versions("m") == [1, 2], timeout=2 * poll_s)
        assert elapsed <= 2 * poll_s
        shutil.rmtree(tmp_path / "m" / "1")
        wait_until(lambda: repo.versions("m") == [2], timeout=2 * poll_s)
    finally:
        control.stop(5)
    assert not control._thread.is_alive()


def test_a_rescan_request_is_served_at_once_in_poll_mode(tmp_path):
    write_model(tmp_path, "m", 1)
    repo = repository(tmp_path)
    control = ModelControl(repo, ModelControlOptions(mode="poll", poll_s=600))
    control.start()
    try:
        publish(tmp_path, "m", 2)
        assert control.request_rescan()
        wait_until(lambda: repo.versions("m") == [1, 2], timeout=5)
    finally:
        control.stop(5)


def test_start_refuses_only_when_nothing_loads(tmp_path):
    bad = write_model(tmp_path, "m", 1)
    (bad / "model.json").write_text("{")
    with pytest.raises(
        NotFoundError, match="no model in .* could be loaded: .*cannot read model.json"
    ):
        ModelControl(repository(tmp_path)).start()
    ModelControl(repository(tmp_path), ModelControlOptions(mode="explicit")).start()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "sometimes"}, "model control mode must be one of"),
        ({"mode": "poll", "poll_s": 0}, "poll_s must be a positive number"),
        ({"mode": "poll", "poll_s": float("nan")}, "poll_s must be a positive number"),
        ({"load_models": ("m",)}, "need mode 'explicit'"),
    ],
)
def test_model_control_options_are_checked(options, message):
    with pytest.raises(InvalidInputError, match=message):
        ModelControlOptions(**options)


# One version alone --------------------------------------------------------------------------------


def test_open_version_loads_one_version_and_follows_the_policy(two_versions, monkeypatch):
    loaded = []
    original = OnnxModel.load
    monkeypatch.setattr(
        OnnxModel, "load", lambda self: loaded.append(self.directory) or original(self)
    )
    assert open_version(two_versions, options=CPU).version == 2
    set_policy(two_versions, "m", "specific { versions: [1] }")
    assert open_version(two_versions, "m", options=CPU).version == 1
    assert open_version(two_versions, "m", 2, options=CPU).version == 2
    assert loaded == [two_versions / "m" / v for v in ("2", "1", "2")]
    with pytest.raises(NotFoundError, match="has no version 7"):
        open_version(two_versions, "m", 7)
    with pytest.raises(NotFoundError, match="unknown model 'x'"):
        open_version(two_versions, "x")
    write_model(two_versions, "other", 1)
    with pytest.raises(NotFoundError, match=r"name a model: .* holds \['m', 'other'\]"):
        open_version(two_versions)


def test_model_control_flags_fill_the_options():
    import argparse

    from stn_serve.commands.serve_options import model_control_from, model_control_options

    parser = argparse.ArgumentParser(parents=[model_control_options()])
    assert model_control_from(parser.parse_args([])) == ModelControlOptions()
    args = parser.parse_args(
        ["--model-control-mode", "explicit", "--load-model", "a", "--load-model", "b"]
    )
    assert model_control_from(args) == ModelControlOptions("explicit", load_models=("a", "b"))
    with pytest.raises(SystemExit):
        parser.parse_args(["--model-control-mode", "sometimes"])
