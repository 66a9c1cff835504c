"""The installed commands, run as a user would."""
import json
import os

import pytest

from charrnn.presets import PRESETS
from conftest import run_cli, snapshot

TEXT = "Now is the winter of our discontent made glorious summer by this sun of York. " * 10
TINY = ["--hidden_size", 16, "--num_layers", 1, "--batch_size", 4, "--seq_length", 8, "--noxla"]  # auto has its own tests


def _one_error_line(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [l for l in result.stderr.splitlines() if ": error: " in l]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], result.stderr
    return lines[0]


@pytest.fixture
def trained(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "t.txt").write_text(TEXT)
    save = tmp_path / "save"
    result = run_cli("charrnn-train", "--data_dir", data, "--save_dir", save, "--log_dir",
                     tmp_path / "logs", "--num_epochs", 2, "--print_every", 5, *TINY)
    assert result.returncode == 0, result.stderr
    return tmp_path, data, save, result


def test_train_then_sample_as_a_user(trained):
    tmp_path, data, save, result = trained
    assert "step 5/" in result.stdout and "chars/s" in result.stdout and "ETA" in result.stdout
    assert os.path.exists(save / "config.json") and os.path.exists(save / "vocab.json")
    assert not list(save.glob("*.pkl"))
    out = run_cli("charrnn-sample", "--save_dir", save, "--prime", "Now ", "--n", 40, "--seed", 2)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Now ") and len(out.stdout.rstrip("\n")) == 44
    again = run_cli("charrnn-sample", "--save_dir", save, "--prime", "Now ", "--n", 40, "--seed", 2)
    assert again.stdout == out.stdout
    assert "restored" in out.stderr  # logs go to stderr, text alone to stdout


def test_train_resumes_when_run_again(trained):
    tmp_path, data, save, _ = trained
    result = run_cli("charrnn-train", "--data_dir", data, "--save_dir", save, "--log_dir",
                     tmp_path / "logs", "--num_epochs", 3)
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stderr
    assert "starting at step" in result.stderr


def test_max_minutes_ends_a_new_cosine_schedule_with_the_time_and_a_resume_keeps_it(tmp_path):
    """charrnn-train --decay_schedule cosine --max_minutes M on a new run measures the steps that
    fit in M minutes once (after deciding --xla auto) and saves them as decay_steps; a resume with
    another --max_minutes keeps them."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "t.txt").write_text(TEXT)
    save = tmp_path / "save"
    args = ["--data_dir", data, "--save_dir", save, "--log_dir", tmp_path / "logs", "--hidden_size", 16,
            "--num_layers", 1, "--batch_size", 4, "--seq_length", 8, "--decay_schedule", "cosine",
            "--warmup_steps", 2, "--num_epochs", 100000]
    result = run_cli("charrnn-train", *args, "--max_minutes", 0.25)
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert err.index("xla: auto chose") < err.index("budget: 0.25 min = ")
    steps = int(err.split("budget: 0.25 min = ")[1].split(" steps")[0].replace(",", ""))
    assert f"schedule: cosine decay to step {steps:,} (what fits in 0.25 minutes on this machine" in err
    with open(save / "config.json") as f:
        saved = json.load(f)["config"]
    assert saved["decay_steps"] == steps and saved["xla"] in (True, False)
    # It ends with its time, or with its schedule if the time measured at start-up was pessimistic.
    assert "max_minutes: step" in err or f"complete: step {steps}/{steps}," in err
    again = run_cli("charrnn-train", *args, "--max_minutes", 0.05)
    assert again.returncode == 0, again.stderr
    assert "budget:" not in again.stderr and "resumed from" in again.stderr
    with open(save / "config.json") as f:
        assert json.load(f)["config"]["decay_steps"] == steps


def test_preset_cpu30_brings_its_30_minute_budget_and_a_resume_keeps_the_saved_values(tmp_path):
    """--preset cpu30 is a 30-minute recipe: a new run measures the steps that fit in 30 minutes
    as its cosine schedule's end (--max_minutes 0 opts out); a resume keeps what the run saved for
    the preset's fields unless a flag is given again, and says so."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "t.txt").write_text(TEXT)
    tiny = ["--data_dir", data, "--log_dir", tmp_path / "logs", "--preset", "cpu30", "--hidden_size", 16,
            "--num_layers", 1, "--batch_size", 4, "--seq_length", 8, "--noxla", "--max_steps", 2]

    def saved(save):
        with open(save / "config.json") as f:
            return json.load(f)["config"]

    budgeted = run_cli("charrnn-train", *tiny, "--save_dir", tmp_path / "a")
    assert budgeted.returncode == 0, budgeted.stderr
    steps = int(budgeted.stderr.split("budget: 30 min = ")[1].split(" steps")[0].replace(",", ""))
    config = saved(tmp_path / "a")
    assert (config["decay_schedule"], config["weight_decay"], config["decay_steps"]) == (
        "cosine", PRESETS["cpu30"]["weight_decay"], steps)

    unlimited = run_cli("charrnn-train", *tiny, "--save_dir", tmp_path / "b", "--max_minutes", 0,
                        "--weight_decay", 0)
    assert unlimited.returncode == 0, unlimited.stderr
    assert "budget:" not in unlimited.stderr
    config = saved(tmp_path / "b")
    per_epoch = int(unlimited.stderr.split("training: ")[1].split(" batches/epoch")[0])
    assert (config["weight_decay"], config["decay_steps"]) == (0.0, 50 * per_epoch)  # the preset's epochs

    # Without --hidden_size and --batch_size too: the saved width and batch are kept, not the
    # preset's (a checkpoint could not restore into its model; the batch lays out the text).
    without_width_or_batch = [a for a in tiny if a not in ("--hidden_size", 16, "--batch_size", 4)]
    resumed = run_cli("charrnn-train", *without_width_or_batch, "--save_dir", tmp_path / "b")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr and "budget:" not in resumed.stderr
    preset = PRESETS["cpu30"]
    assert (f"resume: kept the saved run's hidden_size 16 (the preset's {preset['hidden_size']}), "
            f"batch_size 4 (the preset's {preset['batch_size']}), "
            f"weight_decay 0.0 (the preset's {preset['weight_decay']}): --preset cpu30 sets up new runs; "
            "pass a flag to change a resumed run's value") in resumed.stderr
    config = saved(tmp_path / "b")
    assert (config["hidden_size"], config["batch_size"], config["weight_decay"]) == (16, 4, 0.0)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_signal_saves_and_exits(tmp_path, signame):
    import signal
    import subprocess
    import time
    from conftest import command

    signum = getattr(signal, signame)

    data = tmp_path / "data"
    data.mkdir()
    (data / "t.txt").write_text(TEXT * 20)
    save = tmp_path / "save"
    proc = subprocess.Popen([command("charrnn-train"), "--data_dir", str(data), "--save_dir", str(save),
                             "--log_dir", str(tmp_path / "logs"), "--num_epochs", "500",
                             "--print_every", "1", *map(str, TINY)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for the first progress line
        line = proc.stdout.readline()
        if line.startswith("step "):
            break
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum
    assert "Traceback" not in err and f"interrupted by {signame}" in err
    assert list(save.glob("model.ckpt-*.index"))


def test_incompatible_resume_refused_and_nothing_changed(trained):
    tmp_path, data, save, _ = trained
    before = snapshot(save)
    result = run_cli("charrnn-train", "--data_dir", data, "--save_dir", save, "--log_dir",
                     tmp_path / "logs", "--hidden_size", 32, "--num_layers", 2)
    _one_error_line(result, "hidden_size: saved 16, now 32", "num_layers: saved 1, now 2", "--fresh")
    assert snapshot(save) == before


def test_sample_errors(trained):
    tmp_path, _, save, _ = trained
    _one_error_line(run_cli("charrnn-sample", "--save_dir", save, "--prime", "Zebra#"),
                    "never saw: '#' 'Z';")
    (tmp_path / "empty").mkdir()
    _one_error_line(run_cli("charrnn-sample", "--save_dir", tmp_path / "empty"), "holds no checkpoint")
    _one_error_line(run_cli("charrnn-sample", "--save_dir", save, "--n", -1), "--n must be 0 or more")
    _one_error_line(run_cli("charrnn-sample", "--save_dir", save, "--argmax", "--top_k", 3), "--top_k")


@pytest.mark.parametrize("args, message", [
    (["--temperature", "nan"], "--temperature must be 0 (greedy) or a finite positive number (got nan)"),
    (["--temperature", "inf"], "--temperature must be 0 (greedy) or a finite positive number (got inf)"),
    (["--top_p", "nan"], "--top_p must be in (0, 1] (got nan)"),
])
def test_sample_refuses_nan_and_infinite_sampling_flags(tmp_path, args, message):
    result = run_cli("charrnn-sample", "--save_dir", tmp_path / "none", *args)
    assert result.returncode == 2
    assert result.stderr.strip() == f"charrnn-sample: error: {message}"


def test_train_refuses_generated_flags_out_of_range_on_one_line(tmp_path):
    result = run_cli("charrnn-train", "--data_dir", tmp_path / "none", "--save_dir", tmp_path / "save",
                     "--dropout", "nan", "--patience", -1)
    assert result.returncode == 2
    assert result.stderr.strip() == ("charrnn-train: error: --dropout must be in [0, 1) (got nan); "
                                     "--patience must be 0 (off) or positive (got -1)")
    assert not (tmp_path / "save").exists()


@pytest.mark.parametrize("make, args, fragments", [
    (None, [], ["no such directory"]),
    ("empty_dir", [], ["no .txt files"]),
    ("empty_text", [], ["empty or only whitespace"]),
    ("latin1", [], ["bad.txt", "byte offset 3"]),
    ("short", [], ["needs at least 33"]),
    ("good", ["--hidden_size", 0], ["--hidden_size must be a positive integer"]),
    ("good", ["--learning_rate", -1], ["--learning_rate must be a positive number"]),
    ("good", ["--num_epochs", 0], ["--num_epochs must be a positive integer"]),
    ("good", ["--batch_size", -2], ["--batch_size must be a positive integer"]),
    ("good", ["--dropout", 1.0], ["--dropout must be in [0, 1)"]),
    ("good", ["--dropout", -0.1], ["--dropout must be in [0, 1)"]),
    ("good", ["--val_frac", -0.1], ["--val_frac must be in [0, 1)"]),
    ("good", ["--val_frac", 1], ["--val_frac must be in [0, 1)"]),
    ("good", ["--seq_length", 0], ["--seq_length must be a positive integer"]),
    ("good", ["--max_steps", 0], ["--max_steps must be positive"]),
    ("good", ["--grad_clip", 0], ["--grad_clip must be a positive number"]),
    ("whitespace", [], ["empty or only whitespace"]),
    ("binary", [], ["bad.txt", "not valid UTF-8"]),
    ("nul", [], ["bad.txt", "binary file"]),
    ("one_char", [], ["only 1 distinct character", "nothing to learn"]),
    ("is_file", [], ["is a file, not a directory"]),
    ("good", ["--save_dir", "UNDER_FILE"], ["not writable"]),
])
def test_train_bad_input(tmp_path, make, args, fragments):
    data = tmp_path / "data"
    contents = {"empty_text": b"", "latin1": "caf\u00e9 noir".encode("latin-1"),
                "short": b"abcdefghij" * 3, "good": TEXT.encode(), "whitespace": b" \n\t\r\n  ",
                "binary": bytes(range(256)) * 40, "nul": b"text\x00with\x00nul bytes" * 50,
                "one_char": b"a" * 1000}
    if make == "is_file":
        data.write_text(TEXT)
    elif make is not None:
        data.mkdir()
        if make in contents:
            bad = make in ("latin1", "binary", "nul")
            (data / ("bad.txt" if bad else "t.txt")).write_bytes(contents[make])
    save = tmp_path / "save"
    (tmp_path / "a_file").write_text("x")
    args = [tmp_path / "a_file" / "save" if a == "UNDER_FILE" else a for a in args]
    result = run_cli("charrnn-train", "--data_dir", data, "--save_dir", save, "--log_dir",
                     tmp_path / "logs", "--val_frac", 0, *TINY, *args)
    _one_error_line(result, *fragments)
    assert not save.exists() or not list(save.iterdir())


def test_accepted_inputs_are_logged(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "t.txt").write_bytes(b"\xef\xbb\xbf" + TEXT.replace("\n", "\r\n").encode() + b"line\r\n" * 40)
    save = tmp_path / "save"
    result = run_cli("charrnn-train", "--data_dir", data, "--save_dir", save, "--log_dir",
                     tmp_path / "logs", "--val_frac", 0, "--max_steps", 2, *TINY)
    assert result.returncode == 0, result.stderr
    assert "CRLF line ends" in result.stderr and "validation: off (--val_frac 0)" in result.stderr
    import json

    chars = json.load(open(save / "vocab.json"))["chars"]
    assert "\r" in chars and "\ufeff" not in chars  # CRLF kept as characters, the BOM stripped
    only_prime = run_cli("charrnn-sample", "--save_dir", save, "--prime", "Now", "--n", 0)
    assert only_prime.returncode == 0 and only_prime.stdout == "Now\n"
    import subprocess

    from conftest import command

    drawn = subprocess.run([command("charrnn-sample"), "--save_dir", str(save), "--prime", "", "--n", "12"],
                           capture_output=True)  # bytes: the text may hold \r, which text mode rewrites
    assert drawn.returncode == 0 and len(drawn.stdout.decode("utf-8")) == 13


def test_more_than_65535_distinct_characters_train_and_sample(tmp_path):
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 20000)] + [chr(c) for c in range(0x20000, 0x20000 + 50000)]
    data = tmp_path / "data"
    data.mkdir()
    (data / "t.txt").write_text("".join(chars) * 2)  # 70,000 distinct characters: 32-bit ids
    save = tmp_path / "save"
    result = run_cli("charrnn-train", "--data_dir", data, "--save_dir", save, "--log_dir", tmp_path / "logs",
                     "--hidden_size", 8, "--num_layers", 1, "--batch_size", 4, "--seq_length", 8,
                     "--val_frac", 0, "--max_steps", 2)
    assert result.returncode == 0, result.stderr
    assert "xla: auto chose" in result.stderr  # the default, through the installed command
    out = run_cli("charrnn-sample", "--save_dir", save, "--prime", chars[-1], "--n", 20)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.rstrip("\n")) == 21 and set(out.stdout.rstrip("\n")) <= set(chars)


def test_messy_text_goes_on_with_bad_text_and_resumes_from_the_prepared_ids(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "scraped.txt").write_bytes(TEXT.encode() + b"\x00\xff\xfe" + TEXT.encode())
    (data / "empty.txt").write_bytes(b"")
    save, cache = tmp_path / "save", tmp_path / "cache"
    common = ["--data_dir", data, "--save_dir", save, "--log_dir", tmp_path / "logs", "--cache_dir", cache,
              *TINY]
    refused = run_cli("charrnn-train", *common, "--max_steps", 2)
    _one_error_line(refused, "scraped.txt", f"not valid UTF-8 at byte offset {len(TEXT) + 1}", "--bad_text")
    first = run_cli("charrnn-train", *common, "--max_steps", 2, "--bad_text", "replace",
                    "--val_frac", 0.2, "--max_val_chars", 100)
    assert first.returncode == 0, first.stderr
    assert "scraped.txt: 2 invalid UTF-8 sequence(s) and 1 NUL(s) replaced with U+FFFD" in first.stderr
    assert "empty.txt is empty; skipped" in first.stderr
    assert "scoring the first 100 (--max_val_chars)" in first.stderr
    assert "\ufffd" in json.loads((save / "vocab.json").read_text(encoding="utf-8"))["chars"]
    # The saved --bad_text applies on resume, and the prepared ids are reused, not read again.
    again = run_cli("charrnn-train", *common, "--max_steps", 1)
    assert again.returncode == 0, again.stderr
    assert "prepared ids reused" in again.stderr and "resumed from" in again.stderr
    other = run_cli("charrnn-train", *common, "--max_steps", 1, "--bad_text", "drop")
    _one_error_line(other, "cannot resume", "bad_text: saved 'replace', now 'drop'")
