"""Job manifests (`flashtalk.jobs.manifest`): JSONL and CSV, paths relative to the manifest, outputs kept
inside the output folder and one per job, and every bad line a failed job with its one-line reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flashtalk.errors import FlashTalkError
from flashtalk.jobs.manifest import read_manifest


def _jsonl(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_jsonl_paths_options_and_default_outputs(tmp_path):
    m = _jsonl(
        tmp_path / "m.jsonl",
        [
            {"portrait": "faces/a.jpg", "audio": "/abs/x.wav"},
            "# a comment, then a blank line",
            "",
            {"portrait": "b.png", "audio": "y.mp3", "output": "sub/b.mp4", "seed": 4, "fps": "30", "paste_back": "yes"},
            {"portrait": "c.png", "audio": "z.wav", "crop": [10, 20, 300, 300]},
        ],
    )
    jobs = read_manifest(m, tmp_path / "out", network=False)
    assert [j.number for j in jobs] == [1, 2, 3] and all(j.error is None for j in jobs)
    a, b, c = (j.request for j in jobs)
    assert a.portrait == tmp_path / "faces/a.jpg" and a.audio == Path("/abs/x.wav")
    assert a.output == (tmp_path / "out" / "a-x.mp4").resolve() and jobs[0].output == "a-x.mp4"
    assert (b.seed, b.fps, b.paste_back, jobs[1].output) == (4, 30.0, True, "sub/b.mp4")
    assert c.crop == (10.0, 20.0, 300.0, 300.0) and a.controls == {}


def test_csv_header_and_empty_cells(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("portrait,audio,seed,output\na.jpg,a.wav,,\nb.jpg,b.wav,7,b.mp4\n")
    jobs = read_manifest(m, tmp_path / "out", network=False)
    assert [(j.request.seed, j.output) for j in jobs] == [(0, "a-a.mp4"), (7, "b.mp4")]
    (tmp_path / "bad.csv").write_text("photo,speech\na,b\n")
    with pytest.raises(FlashTalkError, match="header must name portrait and audio"):
        read_manifest(tmp_path / "bad.csv", tmp_path / "out", network=False)


@pytest.mark.parametrize(
    "line, error",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({"portrait": "a.jpg"}, "audio must be given as a path"),
        ({"portrait": "a.jpg", "audio": "a.wav", "colour": 1}, "unknown key(s) colour"),
        ({"portrait": "a.jpg", "audio": "a.wav", "seed": 1.5}, "seed must be an integer"),
        ({"portrait": "a.jpg", "audio": "a.wav", "fps": "nan"}, "fps must be a finite number"),
        ({"portrait": "a.jpg", "audio": "a.wav", "paste_back": "maybe"}, "paste_back must be true or false"),
        ({"portrait": "a.jpg", "audio": "a.wav", "output": "../a.mp4"}, "outside the output folder"),
        ({"portrait": "a.jpg", "audio": "a.wav", "output": "/tmp/a.mp4"}, "outside the output folder"),
        ({"portrait": "a.jpg", "audio": "a.wav", "output": "a.avi"}, "must end in .mp4"),
        ({"portrait": "a.jpg", "audio": "a.wav", "emotion": "happy.json"}, "need(s) the network"),
    ],
)
def test_a_bad_line_is_a_failed_job_with_its_reason(tmp_path, line, error):
    good = {"portrait": "g.jpg", "audio": "g.wav"}
    jobs = read_manifest(
        _jsonl(tmp_path / "m.jsonl", [good, line, good | {"output": "g2.mp4"}]), tmp_path, network=False
    )
    assert [j.error is None for j in jobs] == [True, False, True]
    assert error in jobs[1].error and "\n" not in jobs[1].error


def test_two_jobs_on_one_output_the_second_fails(tmp_path):
    m = _jsonl(
        tmp_path / "m.jsonl",
        [{"portrait": "a.jpg", "audio": "a.wav"}, {"portrait": "x/a.jpg", "audio": "y/a.wav"}],
    )
    first, second = read_manifest(m, tmp_path / "out", network=False)
    assert first.error is None and "also job 1's output" in second.error


def test_network_jobs_take_controls_and_emotion_relative_to_the_manifest(tmp_path):
    m = _jsonl(
        tmp_path / "m.jsonl",
        [{"portrait": "a.jpg", "audio": "a.wav", "controls": "track.json", "emotion": "happy.json"}],
    )
    (job,) = read_manifest(m, tmp_path, network=True)
    assert job.request.controls == {
        "controls": tmp_path / "track.json",
        "emotion": tmp_path / "happy.json",
        "auto_blink": True,
    }


def test_unreadable_manifests_are_refused(tmp_path):
    with pytest.raises(FlashTalkError, match="not found"):
        read_manifest(tmp_path / "none.jsonl", tmp_path, network=False)
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(FlashTalkError, match="expected a .jsonl or .csv"):
        read_manifest(tmp_path / "m.txt", tmp_path, network=False)
    (tmp_path / "e.jsonl").write_text("\n# nothing\n")
    with pytest.raises(FlashTalkError, match="holds no job"):
        read_manifest(tmp_path / "e.jsonl", tmp_path, network=False)
