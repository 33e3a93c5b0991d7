"""`flashtalk preset save / show` and `flashtalk emotion show` (tiny preset, seeded weights), and a bad control flag of
`flashtalk animate`."""

from __future__ import annotations

from flashtalk.controls.emotion import load_preset


def test_cli_preset_save_and_animate_flags(tmp_path, capsys):
    from flashtalk.cli import main
    from flashtalk.cli.animate import demo_assets

    portrait = str(demo_assets()[0])
    out = tmp_path / "p.json"
    assert (
        main(["preset", "save", portrait, "-o", str(out), "--seeded-weights", "--preset", "tiny", "--device", "cpu"])
        == 0
    )
    name, offset = load_preset(out)
    assert name == "p" and bool(offset.abs().sum() > 0) and offset[5, :2].abs().sum() == 0
    assert main(["preset", "show", str(out)]) == 0
    assert main(["emotion", "show", str(out)]) == 0  # the command's name; `preset` is its former one
    assert "largest" in capsys.readouterr().out
    assert main(["preset", "save", portrait, "-o", str(out), "--seeded-weights"]) == 2  # exists
    assert main(["preset", "save", portrait, "-o", str(tmp_path / "q.json")]) == 2  # no network
    assert main(["animate", portrait, portrait, "-o", str(tmp_path / "o.mp4"), "--gaze", "5"]) == 2
    assert "--gaze takes X,Y" in capsys.readouterr().err
