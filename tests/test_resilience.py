"""Never lose work: exact resume after SIGKILL, damaged checkpoints, locks, divergence, full disks."""
import dataclasses
import glob
import json
import os
import signal
import subprocess
import sys

import pytest

from charrnn import rundir
from charrnn import train as trainer
from charrnn.errors import CheckpointError, ConfigError, TrainingError
from charrnn.tfcompat import load
from conftest import assert_identical, checkpoint_tensors, command, make_data_dir, run_cli, snapshot, tiny_config

TEXT = "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him. " * 12
TINY = ["--hidden_size", 16, "--num_layers", 2, "--batch_size", 4, "--seq_length", 8, "--val_frac", 0,
        "--noxla"]  # --xla auto may pick either graph; a bit-exact comparison needs one


@pytest.mark.parametrize("dropout, extra", [(0.0, []), (0.3, ["--deterministic"])])
def test_sigkill_then_resume_is_bit_identical(tmp_path, dropout, extra):
    data = tmp_path / "data"
    data.mkdir()
    (data / "t.txt").write_text(TEXT)
    args = [*TINY, "--num_epochs", 2, "--seed", 7, "--dropout", dropout, "--save_every", 10,
            "--print_every", 1, *extra]
    reference = run_cli("charrnn-train", "--data_dir", data, "--save_dir", tmp_path / "ref",
                        "--log_dir", tmp_path / "logs", *args)
    assert reference.returncode == 0, reference.stderr

    save = tmp_path / "killed"
    proc = subprocess.Popen([command("charrnn-train"), "--data_dir", str(data), "--save_dir", str(save),
                             "--log_dir", str(tmp_path / "logs"), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:  # kill at step 14: four steps after the step-10 checkpoint
        if line.startswith("step 14/"):
            proc.kill()
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert rundir.usable_checkpoint(str(save)).endswith("model.ckpt-10")
    resumed = run_cli("charrnn-train", "--data_dir", data, "--save_dir", save, "--log_dir",
                      tmp_path / "logs")
    assert resumed.returncode == 0, resumed.stderr
    assert "starting at step 10" in resumed.stderr
    assert_identical(checkpoint_tensors(str(save)), checkpoint_tensors(str(tmp_path / "ref")))


def _trained(tmp_path, steps=6, save_every=2, **overrides):
    data = make_data_dir(tmp_path, TEXT)
    save = str(tmp_path / "save")
    config = tiny_config(save_every=save_every, num_epochs=3, **overrides)
    run = trainer.prepare(config, data, save)
    trainer.train(run, save, str(tmp_path / "logs"), max_steps=steps)
    return data, save, config


def _damage(prefix, how):
    (path,) = glob.glob(prefix + ".data-*")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if how == "truncate":
            f.truncate(size // 2)
        else:
            f.seek(size // 2)
            chunk = f.read(64)
            f.seek(size // 2)
            f.write(bytes(b ^ 0xFF for b in chunk))


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_damaged_newest_checkpoint_falls_back_to_previous_with_a_warning(tmp_path, how):
    data, save, config = _trained(tmp_path)
    _damage(os.path.join(save, "model.ckpt-6"), how)
    warnings = []
    assert rundir.usable_checkpoint(save, warnings.append).endswith("model.ckpt-4")
    assert len(warnings) == 1 and "model.ckpt-6 is damaged" in warnings[0]
    result = run_cli("charrnn-train", "--data_dir", data, "--save_dir", save, "--log_dir",
                     tmp_path / "logs", "--max_steps", 1)
    assert result.returncode == 0, result.stderr
    assert "model.ckpt-6 is damaged" in result.stderr and "starting at step 4" in result.stderr
    sample = run_cli("charrnn-sample", "--save_dir", save, "--checkpoint", "latest", "--prime", "F", "--n", 5)
    assert sample.returncode == 0, sample.stderr


def test_every_checkpoint_damaged_is_a_clear_error(tmp_path):
    data, save, _ = _trained(tmp_path, steps=4)
    for step in (2, 4):
        _damage(os.path.join(save, f"model.ckpt-{step}"), "flip")
    before = snapshot(save)
    result = run_cli("charrnn-train", "--data_dir", data, "--save_dir", save, "--log_dir", tmp_path / "logs")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "every checkpoint is damaged" in result.stderr
    assert snapshot(save) == before


def test_garbled_checkpoint_list_still_finds_the_files(tmp_path):
    _, save, _ = _trained(tmp_path)
    with open(os.path.join(save, "checkpoint"), "w") as f:
        f.write("model_checkpoint_path: \x00\x01 garbage {{{")
    assert rundir.usable_checkpoint(save).endswith("model.ckpt-6")


def test_second_trainer_on_the_same_save_dir_is_refused_and_a_dead_holder_is_not(tmp_path):
    data, save, _ = _trained(tmp_path, steps=2)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from charrnn.rundir import RunDir\n"
         f"hold = RunDir({save!r}).training(); hold.__enter__(); print('locked', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    before = snapshot(save)
    result = run_cli("charrnn-train", "--data_dir", data, "--save_dir", save, "--log_dir", tmp_path / "logs")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is in use by a running charrnn-train (pid" in result.stderr
    assert snapshot(save) == before
    holder.kill()
    holder.wait()
    with rundir.RunDir(save).training():  # the kernel released the dead process's lock
        pass


def test_non_finite_loss_stops_before_saving(tmp_path):
    data, save, config = _trained(tmp_path, steps=2)
    before = snapshot(save)
    diverging = dataclasses.replace(config, learning_rate=3e38)  # the first update overflows
    run = trainer.prepare(diverging, data, save, explicit=("learning_rate",))
    with pytest.raises(TrainingError, match="training diverged: (loss|gradient norm) is (nan|inf)"):
        trainer.train(run, save, str(tmp_path / "logs"))
    assert snapshot(save) == before  # not one file changed, the last good checkpoint stays


def test_simulated_write_error_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    tf, tf1 = load()
    data, save, config = _trained(tmp_path, steps=2)
    real_save = tf1.train.Saver.save

    def failing_save(self, sess, save_path, global_step=None, **kw):
        # Leave a partial file behind, as a full disk would, then fail.
        with open(f"{save_path}-{global_step}.index", "wb") as f:
            f.write(b"\x00" * 10)
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    monkeypatch.setattr(tf1.train.Saver, "save", failing_save)
    run = trainer.prepare(config, data, save)
    with pytest.raises(CheckpointError, match="could not save the step-4 checkpoint.*No space left"):
        trainer.train(run, save, str(tmp_path / "logs"))
    monkeypatch.setattr(tf1.train.Saver, "save", real_save)
    assert not glob.glob(os.path.join(save, "model.ckpt-4*"))  # the partial file is gone
    warnings = []
    assert rundir.usable_checkpoint(save, warnings.append).endswith("model.ckpt-2")
    assert warnings == []


def test_real_full_disk_during_save_keeps_the_previous_checkpoint(tmp_path):
    """A 2 MB tmpfs filled up after the first checkpoint (needs root to mount; else skipped)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (not root?)")
    try:
        data = tmp_path / "data"
        data.mkdir()
        (data / "t.txt").write_text(TEXT)
        save = mount / "save"
        args = ["--data_dir", data, "--save_dir", save, "--log_dir", tmp_path / "logs", *TINY,
                "--save_every", 3]
        first = run_cli("charrnn-train", *args, "--max_steps", 3)
        assert first.returncode == 0, first.stderr
        with open(mount / "filler", "wb", buffering=0) as f:  # fill the disk to the last byte
            try:
                while True:
                    f.write(b"\x00" * 4096)
                    f.flush()
            except OSError:
                pass
        # Leave room for the small files (the write probe, config.json, vocab.json) but not
        # for the checkpoint itself, so the failure happens inside the save.
        os.truncate(mount / "filler", os.path.getsize(mount / "filler") - 16384)
        before = snapshot(save)
        second = run_cli("charrnn-train", *args, "--max_steps", 3)
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
        assert "could not save the step-6 checkpoint" in second.stderr
        assert "No space left on device" in second.stderr
        assert not [n for n in os.listdir(save) if n.startswith("model.ckpt-6")], os.listdir(save)
        assert not [n for n in os.listdir(save / "best") if "ckpt-6" in n] if (save / "best").exists() else True
        os.unlink(mount / "filler")
        assert rundir.usable_checkpoint(str(save), lambda m: None).endswith("model.ckpt-3")
        for name in ("config.json", "vocab.json", "model.ckpt-3.index"):
            assert snapshot(save)[name] == before[name]
        resumed = run_cli("charrnn-train", *args, "--max_steps", 1)
        assert resumed.returncode == 0 and "starting at step 3" in resumed.stderr
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_untrusted_config_and_vocab_are_refused(tmp_path):
    data, save, _ = _trained(tmp_path, steps=2)
    config_path, vocab_path = os.path.join(save, "config.json"), os.path.join(save, "vocab.json")
    original = json.load(open(config_path))
    cases = [
        ({**original, "format_version": 99}, "format version 99"),
        ({**original, "config": {**original["config"], "__reduce__": "os.system"}}, "unknown fields"),
        ({**original, "config": {**original["config"], "hidden_size": "16; rm -rf /"}}, "should be int"),
        ({**original, "config": {**original["config"], "dropout": 1.5}}, "--dropout must be in"),
    ]
    for bad, message in cases:
        json.dump(bad, open(config_path, "w"))
        with pytest.raises(ConfigError, match=message):
            trainer.prepare(tiny_config(), data, save)
    json.dump(original, open(config_path, "w"))
    vocab = json.load(open(vocab_path))
    json.dump({**vocab, "chars": vocab["chars"][:-1] + ["ab"]}, open(vocab_path, "w"))
    result = run_cli("charrnn-sample", "--save_dir", save)
    assert result.returncode == 2 and "not a valid vocabulary" in result.stderr
    assert "Traceback" not in result.stderr


def test_checkpoint_weights_disagreeing_with_config_are_refused(tmp_path):
    _, save, _ = _trained(tmp_path, steps=2)
    config_path, vocab_path = os.path.join(save, "config.json"), os.path.join(save, "vocab.json")
    config, vocab = json.load(open(config_path)), json.load(open(vocab_path))
    config["config"]["vocab_size"] += 1  # config names one more character than the weights have
    vocab["chars"].append("\u2603")
    vocab["counts"].append(1)
    json.dump(config, open(config_path, "w"))
    json.dump(vocab, open(vocab_path, "w"))
    result = run_cli("charrnn-sample", "--save_dir", save, "--checkpoint", "latest", "--prime", "F")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "does not match" in result.stderr and "model/embedding is [" in result.stderr
    config["config"]["vocab_size"] += 1  # now config and vocab disagree with each other
    json.dump(config, open(config_path, "w"))
    result = run_cli("charrnn-sample", "--save_dir", save, "--checkpoint", "latest", "--prime", "F")
    assert result.returncode == 2 and "inconsistent" in result.stderr
