"""The training loop: exact resume, refusal to overwrite, NaN stop, corrupt checkpoints, DDP (two gloo processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ldm_minimal.checkpoint import CheckpointError, save_checkpoint
from ldm_minimal.latent_diffusion_io import load_ldm, load_model, save_ldm
from ldm_minimal.training import (
    RunFolderError,
    Trainer,
    TrainingDiverged,
    resume_config,
    train,
    train_config,
)
from ldm_minimal.utils import DATA_DIR, REPO_ROOT

AE = DATA_DIR / "checkpoints" / "shapes32-kl-f4.safetensors"  # a trained first stage shipped with the repository


def ldm_cfg(**kw):
    base = dict(model="shapes-t2i", first_stage=str(AE), batch_size=4, log_every=1, ckpt_every=3, sample_every=100,
                sample_steps=2, progress=False, warmup=2)
    return train_config("cpu", "ldm", **{**base, **kw})


def ae_cfg(**kw):
    base = dict(model="tiny-kl-f4", perceptual="none", adversarial=True, disc_start=2, disc_ndf=8, disc_n_layers=2,
                batch_size=4, log_every=1, ckpt_every=3, sample_every=100, progress=False, warmup=2)
    return train_config("cpu", "ae", **{**base, **kw})


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("make_cfg", [ldm_cfg, ae_cfg], ids=["ldm", "ae"])
def test_resume_after_a_crash_is_bit_for_bit_the_uninterrupted_run(tmp_path, make_cfg):
    cfg = make_cfg(steps=6)
    full = train(cfg, tmp_path / "full")
    # the same run, killed after step 4 (its last checkpoint is step 3), then resumed
    crashed = Trainer(cfg, tmp_path / "crashed")
    assert crashed.run(stop_after=4) == {"interrupted_at": 4}
    assert [p.name for p in crashed.checkpoints()] == ["step_0000003"]
    assert len(losses(tmp_path / "crashed")) == 4
    resumed = train(resume_config(tmp_path / "crashed"), tmp_path / "crashed", resume=True)
    assert resumed["steps"] == full["steps"] == 6
    assert losses(tmp_path / "crashed") == losses(tmp_path / "full")  # step 4 is logged once, with the same loss
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "crashed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the EMA really differs from the raw weights (so the export is the EMA, and the test above compares it)
    raw = load_file(tmp_path / "full" / "checkpoints" / "step_0000006" / "train_state.safetensors")
    key = next(k for k in a if k.startswith("unet.") or k.startswith("encoder."))
    assert not torch.equal(raw["model." + key], a[key])


def test_a_resumed_run_can_train_longer_but_not_change_what_it_learns(tmp_path):
    train(ldm_cfg(steps=3), tmp_path / "run")
    with pytest.raises(RunFolderError, match="lr"):
        resume_config(tmp_path / "run", lr=1.0)
    longer = train(resume_config(tmp_path / "run", steps=5), tmp_path / "run", resume=True)
    assert longer["steps"] == 5 and longer["steps_this_session"] == 2
    assert [json.loads(r)["step"] for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]


def test_refuses_to_overwrite_a_run_unless_told(tmp_path):
    train(ldm_cfg(steps=2), tmp_path / "run")
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(RunFolderError, match="--resume .*--overwrite"):
        train(ldm_cfg(steps=2, seed=1), tmp_path / "run")
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before  # untouched
    train(ldm_cfg(steps=2, seed=1), tmp_path / "run", overwrite=True)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() != before
    with pytest.raises(RunFolderError, match="no checkpoints"):
        train(ldm_cfg(steps=2), tmp_path / "empty", resume=True)


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = Trainer(ldm_cfg(steps=8), tmp_path / "run")
    real = trainer.model.training_loss
    calls = {"n": 0}

    def poisoned(batch, generator=None, **kw):
        calls["n"] += 1
        loss, logs = real(batch, generator, **kw)
        if calls["n"] == 5:
            loss = loss * float("nan")
        return loss, logs

    trainer.model.training_loss = poisoned
    with pytest.raises(TrainingDiverged, match="at step 5 .*step_0000003"):
        trainer.run()
    assert [p.name for p in trainer.checkpoints()] == ["step_0000003"]
    assert not (tmp_path / "run" / "model.safetensors").exists()
    model, meta = load_ldm(tmp_path / "run" / "checkpoints" / "step_0000003" / "model.safetensors")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_corrupt_and_mismatched_checkpoints_give_clear_errors(tmp_path):
    train(ldm_cfg(steps=3), tmp_path / "run")
    state = tmp_path / "run" / "checkpoints" / "step_0000003" / "train_state.safetensors"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # truncated
    with pytest.raises(CheckpointError, match="train_state.safetensors.*corrupt"):
        train(resume_config(tmp_path / "run", steps=4), tmp_path / "run", resume=True)

    model_file = tmp_path / "run" / "model.safetensors"
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(model_file.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="broken.safetensors.*truncated or corrupt"):
        load_model(broken)

    # a file whose tensors come from another architecture than its config says
    ldm, meta = load_ldm(model_file)
    tensors = load_file(model_file)
    key = next(k for k, v in tensors.items() if k.startswith("unet.") and v.ndim == 4)
    tensors[key] = torch.zeros(7, 7, 3, 3)
    odd = tmp_path / "odd.safetensors"
    save_checkpoint(odd, tensors, kind="ldm", config=meta["config"])
    with pytest.raises(CheckpointError, match="odd.safetensors.*shape mismatch"):
        load_ldm(odd)
    with pytest.raises(CheckpointError, match="not a latent diffusion model"):
        load_ldm(AE)


def test_export_is_self_contained_and_samples(tmp_path):
    train(ldm_cfg(steps=2), tmp_path / "run")
    ldm, meta = load_ldm(tmp_path / "run" / "model.safetensors")
    assert meta["info"]["first_stage_file"]["sha256"]
    assert meta["info"]["train"]["model"] == "shapes-t2i"
    x = ldm.sample({"caption": ["a large red circle in the center"]}, steps=2, progress=False)
    assert x.shape == (1, 3, 32, 32) and torch.isfinite(x).all()
    assert (tmp_path / "run" / "samples").is_dir() and any((tmp_path / "run" / "samples").glob("*.png"))
    # fp16 shipping copy: scale factor kept in float32
    small = save_ldm(tmp_path / "small.safetensors", ldm, dtype=torch.float16)
    t = load_file(small)
    assert t["scale_factor"].dtype == torch.float32 and t["unet.up.5.0.skip.weight"].dtype == torch.float16


def test_ldm_needs_a_trained_first_stage(tmp_path):
    with pytest.raises(ValueError, match="TRAINED first stage"):
        Trainer(train_config("cpu", "ldm", model="shapes-t2i", steps=1), tmp_path / "run")


def test_package_never_unpickles_code():
    """Loading never executes code from a file: safetensors everywhere, torch.load only with weights_only=True."""
    for path in (REPO_ROOT / "ldm_minimal").rglob("*.py"):
        for i, line in enumerate(path.read_text().splitlines()):
            if "torch.load(" in line and not line.strip().startswith("#"):
                assert "weights_only=True" in line, f"{path}:{i + 1} calls torch.load without weights_only=True"
            assert "import pickle" not in line, f"{path}:{i + 1} imports pickle"


@pytest.mark.parametrize("task", ["ldm", "ae"])
def test_ddp_smoke_run_with_two_gloo_processes(tmp_path, task):
    out = tmp_path / task
    common = ["--steps", "3", "--batch-size", "4", "--log-every", "1", "--ckpt-every", "2", "--no-progress",
              "--device", "cpu", "--out", str(out)]
    if task == "ldm":
        args = ["train", "ldm", "--preset", "cpu", "--model", "shapes-t2i", "--first-stage", str(AE), *common]
    else:
        args = ["train", "ae", "--preset", "cpu", "--perceptual", "none", "--adversarial", "--disc-start", "1",
                "--disc-ndf", "8", "--disc-n-layers", "2", *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ldm_minimal", *args]
    res = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True and summary["steps"] == 3
    assert (out / "model.safetensors").exists() and len(losses(out)) == 3


# ----------------------------------------------------------------------------------------------------------------
# The run folder's marker, stale temporaries, a lower --lr on resume, config validation, first-stage files
# ----------------------------------------------------------------------------------------------------------------


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_overwrite_refuses_a_folder_that_is_not_a_run_and_deletes_nothing(tmp_path, capsys):
    from ldm_minimal.cli import main

    # a folder shaped like data/: checkpoints/ with the manifest and a shipped model, but no run marker
    data = tmp_path / "data"
    (data / "checkpoints").mkdir(parents=True)
    (data / "checkpoints" / "MANIFEST.json").write_text((DATA_DIR / "checkpoints" / "MANIFEST.json").read_text())
    (data / "checkpoints" / "shapes32-kl-f4.safetensors").write_bytes(AE.read_bytes())
    (data / "README.md").write_text("the shipped data\n")
    before = tree_bytes(data)
    rc = main(["train", "ae", "--preset", "cpu", "--steps", "1", "--no-progress", "--out", str(data), "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and err.startswith("error: ")
    assert "not a run made by this project" in err and "checkpoints/" in err and "Nothing was deleted" in err
    assert tree_bytes(data) == before  # byte for byte, nothing added or removed
    with pytest.raises(RunFolderError, match="not a run made by this project"):
        train(ldm_cfg(steps=2), data)  # without --overwrite too
    assert tree_bytes(data) == before

    # a real run carries the marker, and --overwrite still replaces it
    train(ldm_cfg(steps=2), tmp_path / "run")
    marker = json.loads((tmp_path / "run" / ".ldm-minimal-run").read_text())
    assert marker["format"] == "ldm-minimal-run" and marker["task"] == "ldm" and marker["created"]
    old = (tmp_path / "run" / "model.safetensors").read_bytes()
    train(ldm_cfg(steps=2, seed=1), tmp_path / "run", overwrite=True)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() != old

    # a run made before markers existed: --overwrite refuses it, --resume continues it and marks it
    (tmp_path / "run" / ".ldm-minimal-run").unlink()
    with pytest.raises(RunFolderError, match="not a run made by this project"):
        train(ldm_cfg(steps=2), tmp_path / "run", overwrite=True)
    train(resume_config(tmp_path / "run", steps=3), tmp_path / "run", resume=True)
    assert json.loads((tmp_path / "run" / ".ldm-minimal-run").read_text())["format"] == "ldm-minimal-run"


def test_a_bad_first_stage_never_costs_the_run_in_the_folder(tmp_path):
    train(ldm_cfg(steps=2), tmp_path / "run")
    before = tree_bytes(tmp_path / "run")
    with pytest.raises(CheckpointError, match="does not exist"):
        train(ldm_cfg(steps=2, first_stage=str(tmp_path / "nope.safetensors")), tmp_path / "run", overwrite=True)
    assert tree_bytes(tmp_path / "run") == before


def test_stale_temporary_checkpoint_folders_are_removed_on_resume(tmp_path):
    train(ldm_cfg(steps=3), tmp_path / "run")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / "run" / "checkpoints" / f".tmp-step_0000006-{dead_pid}"
    live = tmp_path / "run" / "checkpoints" / f".tmp-step_0000006-{os.getppid()}"  # a live process: kept
    for folder in (stale, live):
        folder.mkdir()
        (folder / "train_state.safetensors").write_bytes(b"half written")
    train(resume_config(tmp_path / "run", steps=4), tmp_path / "run", resume=True)
    assert not stale.exists() and live.exists()
    # a new run in a marked folder (--overwrite) starts without them too
    stale.mkdir()
    train(ldm_cfg(steps=2), tmp_path / "run", overwrite=True)
    assert not stale.exists()


def test_a_resume_may_lower_the_learning_rate_and_records_it(tmp_path):
    train(ldm_cfg(steps=3, lr=5e-4), tmp_path / "run")
    with pytest.raises(RunFolderError, match="lr.*not raise"):
        resume_config(tmp_path / "run", lr=1e-3)
    cfg = resume_config(tmp_path / "run", steps=5, lr=1e-4)
    assert cfg.lr == 1e-4
    trainer = Trainer(cfg, tmp_path / "run", resume=True, command="train ldm --resume --lr 1e-4")
    summary = trainer.run()
    assert summary["steps"] == 5
    assert all(g["lr"] == 1e-4 for opt in trainer.optimizers.values() for g in opt.param_groups)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == [2.5e-4, 5e-4, 5e-4, 1e-4, 1e-4]  # warm-up 2, then the new lr from step 4
    changes = json.loads((tmp_path / "run" / "config.json").read_text())["changes"]
    assert changes == [{"setting": "lr", "from": 5e-4, "to": 1e-4, "after_step": 3,
                        "command": "train ldm --resume --lr 1e-4"}]
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_0000005" / "state.json").read_text())
    assert state["train"]["lr"] == 1e-4  # the next resume starts from the new value


@pytest.mark.parametrize("flag, value", [("--grad-clip", "nan"), ("--lr", "inf"), ("--weight-decay", "nan"),
                                         ("--grad-clip", "-1")])
def test_non_finite_settings_are_refused_in_one_line(tmp_path, capsys, flag, value):
    from ldm_minimal.cli import main

    out = tmp_path / "run"
    rc = main(["train", "ae", "--preset", "cpu", "--steps", "1", "--no-progress", flag, value, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and flag.lstrip("-").replace("-", "_") in err
    assert not out.exists()
    with pytest.raises(ValueError, match="grad_clip must be a finite number"):
        train_config("cpu", "ae", grad_clip=float("nan"))


def test_a_pickle_given_as_first_stage_is_refused_and_never_executed(tmp_path):
    import pickle

    ran = tmp_path / "pickle_ran"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (ran,))

    zipped = tmp_path / "ae.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": Exploit()}, zipped)
    bare = tmp_path / "ae.ckpt"
    bare.write_bytes(pickle.dumps(Exploit(), protocol=4))
    for path in (zipped, bare):
        with pytest.raises(CheckpointError, match="not a safetensors checkpoint of this project.*pickles are never"):
            Trainer(ldm_cfg(steps=1, first_stage=str(path)), tmp_path / "run")
        with pytest.raises(CheckpointError, match="pickles are never loaded"):
            load_model(path)
    assert not ran.exists() and not (tmp_path / "run").exists()


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
import ldm_minimal.training.loop as loop
from ldm_minimal.training import train, train_config

real = loop.save_checkpoint

def dying(path, *args, **kw):  # step 4's training state: half the file is on disk when SIGKILL arrives
    real(path, *args, **kw)
    if "step_0000004" in str(path.parent) and path.name == "train_state.safetensors":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return path

loop.save_checkpoint = dying
cfg = train_config("cpu", "ldm", model="shapes-t2i", first_stage=sys.argv[2], batch_size=4, log_every=1,
                   ckpt_every=2, sample_every=100, sample_steps=2, progress=False, warmup=2, steps=6, num_threads=1)
train(cfg, Path(sys.argv[1]))
"""


def test_a_run_killed_with_sigkill_while_writing_a_checkpoint_resumes_bit_for_bit(tmp_path):
    import signal

    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(run), str(AE)], env=env, cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert list((run / "checkpoints").glob(".tmp-step_0000004-*"))  # the killed write's temporary folder
    assert [p.name for p in sorted((run / "checkpoints").glob("step_*"))] == ["step_0000002"]
    cfg = ldm_cfg(steps=6, ckpt_every=2, num_threads=1)
    train(resume_config(run), run, resume=True)
    full = tmp_path / "full"
    train(cfg, full)
    assert not list((run / "checkpoints").glob(".tmp-*"))  # removed by the resume
    assert losses(run) == losses(full)
    a, b = load_file(full / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
