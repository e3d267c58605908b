"""The same inputs give the same wheel, byte for byte, whenever it is built."""

import time
import zipfile

from conftest import bpw


def test_two_builds_a_year_apart_are_byte_identical(
    tmp_path, monkeypatch, rtx_2_11_wheel
):
    first = bpw.build(tmp_path / "first", base_wheel=str(rtx_2_11_wheel))
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 365 * 24 * 3600)
    second = bpw.build(tmp_path / "second", base_wheel=str(rtx_2_11_wheel))
    assert first.name == second.name
    assert first.read_bytes() == second.read_bytes()


def test_entries_keep_the_release_order_and_timestamps(tmp_path, rtx_2_11_wheel):
    wheel = bpw.build(tmp_path / "out", base_wheel=str(rtx_2_11_wheel))
    with zipfile.ZipFile(rtx_2_11_wheel) as old, zipfile.ZipFile(wheel) as new:
        old_infos = [
            i
            for i in old.infolist()
            if not i.is_dir() and not i.filename.endswith("RECORD")
        ]
        new_infos = new.infolist()
    old_info = "torch_tensorrt_rtx-2.11.0.dist-info/"
    new_info = wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info/"
    renamed = [i.filename.replace(old_info, new_info) for i in old_infos]
    assert [i.filename for i in new_infos] == renamed + [
        new_info + "PATCHES.json",
        new_info + "RECORD",
    ]
    assert [i.date_time for i in new_infos[: len(old_infos)]] == [
        i.date_time for i in old_infos
    ]
    newest = max(i.date_time for i in old_infos)
    assert [i.date_time for i in new_infos[len(old_infos) :]] == [newest, newest]


def test_source_date_epoch_stamps_every_entry(tmp_path, monkeypatch, rtx_2_11_wheel):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    first = bpw.build(tmp_path / "first", base_wheel=str(rtx_2_11_wheel))
    with zipfile.ZipFile(first) as zf:
        stamps = {i.date_time for i in zf.infolist()}
    assert stamps == {time.gmtime(1700000000)[:6]}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000002")
    second = bpw.build(tmp_path / "second", base_wheel=str(rtx_2_11_wheel))
    assert first.read_bytes() != second.read_bytes()
    # Before 1980 a zip archive cannot hold: the earliest it can
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    early = bpw.build(tmp_path / "early", base_wheel=str(rtx_2_11_wheel))
    with zipfile.ZipFile(early) as zf:
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
