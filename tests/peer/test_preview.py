"""Series previews (peer/dicom/preview.py) on pydicom's bundled files, datasets written
here with known pixels, and compressed fixtures made by dcmtk at test time."""

from __future__ import annotations

import importlib.util
import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from peer.dicom import preview as preview_module
from peer.dicom.preview import (
    MAX_PNG_BYTES,
    MAX_SIZE,
    downscale,
    make_previews,
    offer_previews,
    render_file,
)
from peer.dicom.summary import scan, summarize
from peer.dicom.synth import write_study
from peer.proto.manifest import FileEntry, Manifest, decode_manifest, encode_manifest

DCMTK = ("dcmcrle", "dcmcjpls", "dcmcjpeg")


def _bundled(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom's bundled test file {name} is missing"
    return Path(path)


def _pixels(png: bytes) -> NDArray[Any]:
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        return np.asarray(im)


def _render(path: Path, size: int = 128) -> NDArray[Any]:
    png, w, h = render_file(path, size)
    arr = _pixels(png)
    assert arr.shape[:2] == (h, w)
    return arr


def _write(
    path: Path,
    pixels: NDArray[Any],
    *,
    photometric: str = "MONOCHROME2",
    series: str | None = None,
    **attrs: Any,
) -> Path:
    """A Part 10 file with these pixels (frames first for a 3-D array) and attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series or generate_uid()
    ds.Modality = "OT"
    multi = (pixels.ndim == 3 and photometric != "RGB") or pixels.ndim == 4
    ds.set_pixel_data(
        pixels,
        photometric_interpretation=photometric,
        bits_stored=8 * pixels.dtype.itemsize,
    )
    if multi:
        ds.NumberOfFrames = pixels.shape[0]
    for key, value in attrs.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def dcmtk() -> Iterator[None]:
    missing = [tool for tool in DCMTK if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"dcmtk is not installed ({', '.join(missing)}): run `make deps-dicom`")
    yield


def _dcmtk(tool: str, src: Path, dst: Path, *flags: str) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    run = subprocess.run([tool, *flags, str(src), str(dst)], capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    return dst


# --------------------------------------------------------------------------- licences


def test_no_gpl_decoder_is_installed() -> None:
    """pylibjpeg-libjpeg (GPL-3) must never be a dependency; the permissive set is there."""
    assert importlib.util.find_spec("libjpeg") is None
    for module in ("openjpeg", "rle", "jpeg_ls", "gdcm", "PIL"):
        assert importlib.util.find_spec(module) is not None, module


# --------------------------------------------------------------------------- grey values


def test_window_maps_known_values_to_expected_greys(tmp_path: Path) -> None:
    stored = np.array([[0, 1024 + 40, 3000, 1024 - 160], [1024 + 240, 0, 0, 0]], np.uint16)
    path = _write(
        tmp_path / "ct.dcm",
        stored,
        RescaleIntercept=-1024,
        RescaleSlope=1,
        WindowCenter=40,
        WindowWidth=400,
    )
    grey = _render(path)
    # LINEAR window (PS3.3 C.11.2.1.2): HU 40 -> 0.50125, -1024 -> 0, 3000 -> 1
    assert grey.dtype == np.uint8 and grey.ndim == 2
    assert grey[0, 0] == 0 and grey[0, 2] == 255
    assert grey[0, 1] == round((((40 - 39.5) / 399) + 0.5) * 255)
    assert grey[0, 3] == 0  # HU -160 is the window's lower edge
    assert grey[1, 0] == 255  # HU 240: upper edge


def test_first_of_several_windows_and_voi_functions(tmp_path: Path) -> None:
    stored = np.array([[0, 50, 100]], np.uint16)
    two = _write(tmp_path / "two.dcm", stored, WindowCenter=[50, 1000], WindowWidth=[100, 10])
    assert list(_render(two)[0]) == [0, round((((50 - 49.5) / 99) + 0.5) * 255), 255]
    exact = _write(
        tmp_path / "exact.dcm",
        stored,
        WindowCenter=50,
        WindowWidth=100,
        VOILUTFunction="LINEAR_EXACT",
    )
    assert list(_render(exact)[0]) == [0, 128, 255]
    sigmoid = _write(
        tmp_path / "sig.dcm", stored, WindowCenter=50, WindowWidth=100, VOILUTFunction="SIGMOID"
    )
    expected = [round(255 / (1 + np.exp(-4 * (x - 50) / 100))) for x in (0, 50, 100)]
    assert list(_render(sigmoid)[0]) == expected


def test_without_window_the_range_is_min_to_max(tmp_path: Path) -> None:
    path = _write(tmp_path / "mm.dcm", np.array([[100, 150, 200]], np.uint16))
    assert list(_render(path)[0]) == [0, 128, 255]
    flat = _write(tmp_path / "flat.dcm", np.full((4, 4), 7, np.uint16))
    assert int(_render(flat).max()) == 0


def test_min_max_leaves_out_the_padding_value(tmp_path: Path) -> None:
    def padded(name: str, stored: NDArray[Any]) -> Path:
        path = _write(tmp_path / name, stored)
        ds = dcmread(path)
        ds.add_new(0x00280120, "SS", -2000)  # PixelPaddingValue
        ds.save_as(path)
        return path

    assert list(_render(padded("pad.dcm", np.array([[-2000, 0, 50, 100]], np.int16)))[0]) == [
        0,
        0,
        128,
        255,
    ]
    assert int(_render(padded("all.dcm", np.full((2, 2), -2000, np.int16))).max()) == 0


def test_voi_lut_sequence_is_applied(tmp_path: Path) -> None:
    lut_item = Dataset()
    lut_item.LUTDescriptor = [4, 0, 8]
    lut_item.add_new("LUTData", "US", [0, 200, 100, 50])  # non-monotonic: really used
    path = _write(tmp_path / "lut.dcm", np.array([[0, 1, 2, 3]], np.uint16))
    ds = dcmread(path)
    ds.VOILUTSequence = [lut_item]
    ds.save_as(path)
    assert list(_render(path)[0]) == [0, 255, round(100 / 200 * 255), round(50 / 200 * 255)]


def test_monochrome1_is_the_inverse_of_monochrome2(tmp_path: Path) -> None:
    src = dcmread(_bundled("MR_small.dcm"))
    src.PhotometricInterpretation = "MONOCHROME1"
    mono1 = tmp_path / "mono1.dcm"
    src.save_as(mono1)
    normal = _render(_bundled("MR_small.dcm")).astype(int)
    inverted = _render(mono1).astype(int)
    assert normal.std() > 20  # a real image, not a flat one
    assert np.array_equal(inverted, 255 - normal)


def test_ct_small_uses_its_rescale(tmp_path: Path) -> None:
    """CT_small has no window: min..max of the rescaled values; shift the intercept and
    the picture must not change (min..max is invariant), but a window must."""
    ct = _render(_bundled("CT_small.dcm"))
    assert ct.shape == (128, 128) and ct.min() == 0 and ct.max() == 255
    ds = dcmread(_bundled("CT_small.dcm"))
    ds.RescaleIntercept = 500
    ds.save_as(tmp_path / "shifted.dcm")
    assert np.array_equal(_render(tmp_path / "shifted.dcm"), ct)
    ds.WindowCenter, ds.WindowWidth = 40 + 1524, 400  # the same HU window, intercept shifted
    ds.save_as(tmp_path / "windowed.dcm")
    windowed = _render(tmp_path / "windowed.dcm")
    assert not np.array_equal(windowed, ct) and windowed.min() == 0


# --------------------------------------------------------------------------- colour


def test_palette_colour_goes_through_its_palette() -> None:
    rgb = _render(_bundled("examples_palette.dcm"))
    assert rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.shape[:2] == (56, 128)  # 800 x 350, long side 128
    channels = rgb.astype(int)
    spread = max(np.abs(channels[..., i] - channels[..., j]).max() for i, j in [(0, 1), (1, 2)])
    assert spread > 30  # real colours (a grey index image has R == G == B)


def test_ybr_jpeg_matches_the_lossless_rgb_version() -> None:
    reference = _render(_bundled("SC_rgb_rle.dcm")).astype(int)
    assert reference.shape == (100, 100, 3)
    for name in ("SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cr.dcm"):
        ybr = _render(_bundled(name)).astype(int)
        assert ybr.shape == reference.shape
        assert np.abs(ybr - reference).mean() < 6, name  # converted to RGB, lossy only


def test_uncompressed_ybr_full_422_is_converted() -> None:
    reference = _render(_bundled("SC_rgb_rle.dcm")).astype(int)
    ybr = _render(_bundled("SC_ybr_full_422_uncompressed.dcm")).astype(int)
    assert np.abs(ybr - reference).mean() < 6


# --------------------------------------------------------------------------- compressed


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"]
)
def test_lossless_bundled_files_render_like_the_original(name: str) -> None:
    assert np.array_equal(_render(_bundled(name)), _render(_bundled("MR_small.dcm")))


def test_lossy_bundled_files_decode() -> None:
    for name in ("JPEG2000.dcm", "JPEGLSNearLossless_16.dcm", "SC_rgb_jpeg_gdcm.dcm"):
        arr = _render(_bundled(name))
        assert arr.std() > 0 and max(arr.shape[:2]) <= 128, name


def test_dcmtk_lossless_fixtures_match_the_original(dcmtk: None, tmp_path: Path) -> None:
    src = _bundled("MR_small.dcm")
    original = _render(src)
    made = {
        "RLE": _dcmtk("dcmcrle", src, tmp_path / "rle.dcm"),
        "JPEG-LS": _dcmtk("dcmcjpls", src, tmp_path / "jls.dcm"),
        "JPEG lossless SV1 (gdcm)": _dcmtk("dcmcjpeg", src, tmp_path / "jpl.dcm"),
    }
    for label, path in made.items():
        syntax = dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert syntax.is_compressed, label
        assert np.array_equal(_render(path), original), label


def test_dcmtk_baseline_jpeg_decodes_close_to_the_original(dcmtk: None, tmp_path: Path) -> None:
    y, x = np.mgrid[0:64, 0:96]
    grey = ((x * 2 + y) % 256).astype(np.uint8)
    src = _write(tmp_path / "grey8.dcm", grey)
    jpeg = _dcmtk("dcmcjpeg", src, tmp_path / "base.dcm", "+eb")
    meta = dcmread(jpeg, stop_before_pixels=True).file_meta
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert np.abs(_render(jpeg).astype(int) - _render(src).astype(int)).mean() < 4


def test_no_permissive_decoder_means_no_preview_and_a_reason(dcmtk: None, tmp_path: Path) -> None:
    """12-bit JPEG Extended: only GPL libjpeg decodes it; the series is skipped, no crash."""
    src = _bundled("MR_small.dcm")
    ext = _dcmtk("dcmcjpeg", src, tmp_path / "s1" / "ext.dcm", "+ee")
    ok = _dcmtk("dcmcrle", src, tmp_path / "s2" / "rle.dcm")
    ds = dcmread(ok)
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.save_as(ok)
    result = make_previews([ext, ok])
    assert [p.series for p in result.previews] == ["1.2.3.4.5"]
    (skip,) = result.skipped
    assert "no permissively licensed decoder for JPEG Extended" in skip.reason
    assert "12-bit" in skip.reason


# --------------------------------------------------------------------------- choosing


def _shuffled_slices(root: Path) -> list[Path]:
    """Five slices of one series written in a shuffled order; each slice's value is its z
    position (so the middle one, z = 10, shows as 110 of 0..200)."""
    uid = generate_uid()
    files = []
    for k, z in enumerate([30.0, -10.0, 10.0, 0.0, 20.0]):
        img = np.full((8, 8), int(z) + 100, np.uint16)
        img[0, 0] = 0  # fixed min..max: the grey of each slice shows its value
        img[0, 1] = 200
        files.append(
            _write(
                root / f"f{k}.dcm",
                img,
                series=uid,
                ImagePositionPatient=[0, 0, z],
                ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
                InstanceNumber=k + 1,  # misleading on purpose: position wins
            )
        )
    return files


def test_middle_image_by_position_along_the_normal(tmp_path: Path) -> None:
    files = _shuffled_slices(tmp_path)
    (preview,) = make_previews(files).previews
    assert _pixels(preview.png)[4, 4] == round(110 / 200 * 255)  # z = 10, the middle


def test_the_scan_s_slices_give_the_same_previews_without_a_second_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _shuffled_slices(tmp_path)
    (tmp_path / "notes.txt").write_text("not DICOM")
    offered = [*files, tmp_path / "notes.txt"]
    before = make_previews(offered)
    summary, slices = scan((p.name, p) for p in offered)
    assert summary == summarize((p.name, p) for p in offered)
    assert [sl.path for sl in slices] == files  # DICOM files only, in offer order
    assert slices[1].position == (0.0, 0.0, -10.0) and slices[1].number == 2
    assert slices[1].orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

    def no_second_read(path: Path) -> None:
        raise AssertionError(f"{path} read again")

    monkeypatch.setattr(preview_module, "_read_member", no_second_read)
    after = make_previews(offered, slices=slices)
    assert [(p.series, p.png) for p in after.previews] == [
        (p.series, p.png) for p in before.previews
    ]
    assert _pixels(after.previews[0].png)[4, 4] == round(110 / 200 * 255)  # z = 10


def test_middle_image_by_instance_number_then_by_name(tmp_path: Path) -> None:
    uid = generate_uid()
    for k, number in enumerate([3, 1, 2]):
        img = np.full((4, 4), number * 10, np.uint16)
        img[0, 0], img[0, 1] = 0, 40
        _write(tmp_path / "a" / f"f{k}.dcm", img, series=uid, InstanceNumber=number)
    (preview,) = make_previews(sorted((tmp_path / "a").iterdir())).previews
    assert _pixels(preview.png)[2, 2] == round(20 / 40 * 255)
    uid2 = generate_uid()
    for k in range(3):
        img = np.full((4, 4), k * 10, np.uint16)
        img[0, 0], img[0, 1] = 0, 40
        _write(tmp_path / "b" / f"f{k}.dcm", img, series=uid2)
    (preview,) = make_previews(sorted((tmp_path / "b").iterdir(), reverse=True)).previews
    assert _pixels(preview.png)[2, 2] == round(10 / 40 * 255)  # f1.dcm, by name


def test_multiframe_uses_the_middle_frame(tmp_path: Path) -> None:
    frames = np.zeros((5, 6, 6), np.uint8)
    for k in range(5):
        frames[k, :, :] = k * 50
    path = _write(tmp_path / "mf.dcm", frames, WindowCenter=127.5, WindowWidth=256)
    (preview,) = make_previews([path]).previews
    assert int(_pixels(preview.png).mean()) == pytest.approx(100, abs=1)  # frame 2 of 0..4


def test_rgb_multiframe_bundled() -> None:
    arr = _render(_bundled("SC_rgb_rle_2frame.dcm"))  # frame index 1 of 2
    one = _render(_bundled("SC_rgb_rle.dcm"))
    assert arr.shape == one.shape == (100, 100, 3)
    assert not np.array_equal(arr, one)  # pydicom's second frame is the inverted image
    assert np.abs(arr.astype(int) - (255 - one.astype(int))).max() <= 1


# --------------------------------------------------------------------------- size


def test_size_bounds_and_pixel_aspect(tmp_path: Path) -> None:
    wide = _write(tmp_path / "wide.dcm", np.zeros((300, 600), np.uint16))
    assert _render(wide).shape == (64, 128)
    assert _render(wide, size=256).shape == (128, 256)
    assert _render(wide, size=1000).shape == (300, 600)  # never upscaled...
    assert max(_render(tmp_path / "wide.dcm", size=MAX_SIZE).shape) <= MAX_SIZE
    tall_pixels = _write(tmp_path / "px.dcm", np.zeros((100, 100), np.uint16), PixelSpacing=[2, 1])
    assert _render(tall_pixels).shape == (128, 64)  # rows twice as far apart as columns
    tiny = _write(tmp_path / "tiny.dcm", np.zeros((3, 3), np.uint16))
    assert _render(tiny).shape == (3, 3)
    result = make_previews([wide], size=100_000)  # clamped to the protocol's 256
    assert (result.previews[0].w, result.previews[0].h) == (256, 128)


def test_area_averaging_is_exact() -> None:
    checker = np.indices((8, 8)).sum(axis=0) % 2
    assert np.allclose(downscale(checker.astype(np.float32), 2, 2), 0.5)
    ramp = np.array([[0.0, 3.0, 6.0]], np.float32)  # 3 px -> 2: boxes of 1.5 px
    assert np.allclose(downscale(ramp, 1, 2), [[1.0, 5.0]])
    rgb = np.zeros((4, 4, 3), np.float32)
    rgb[:2, :, 0] = 1.0
    out = downscale(rgb, 1, 1)
    assert out.shape == (1, 1, 3) and np.allclose(out[0, 0], [0.5, 0, 0])


def test_noisy_colour_image_stays_under_the_png_limit(tmp_path: Path) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    path = _write(tmp_path / "noise.dcm", noise, photometric="RGB")
    for size in (128, 256):
        png, w, h = render_file(path, size)
        assert len(png) <= MAX_PNG_BYTES and max(w, h) <= size


# --------------------------------------------------------------------------- robustness


def test_files_without_images_or_not_dicom_never_raise(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 50)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    truncated = tmp_path / "cut.dcm"
    truncated.write_bytes(_bundled("CT_small.dcm").read_bytes()[:5000])
    files = [
        junk,
        text,
        truncated,
        _bundled("reportsi.dcm"),  # SR: no pixel data
        _bundled("rtplan.dcm"),
        _bundled("badVR.dcm"),
        tmp_path / "gone.dcm",
        _bundled("CT_small.dcm"),
    ]
    result = make_previews(files)
    # the truncated copy of CT_small is in CT_small's series: its neighbour is used
    (preview,) = result.previews
    assert np.array_equal(_pixels(preview.png), _render(_bundled("CT_small.dcm")))
    reasons = {s.reason for s in result.skipped}
    assert "no image (no image size in the header)" in reasons
    assert "could not read the image header" in reasons  # badVR
    (alone,) = make_previews([truncated]).skipped
    assert alone.reason == "no image (no pixel data)"  # cut before its pixel data


def test_middle_image_that_fails_falls_back_to_a_neighbour(tmp_path: Path) -> None:
    uid = generate_uid()
    paths = []
    for k in range(3):
        img = np.full((4, 4), k * 10, np.uint16)
        img[0, 0], img[0, 1] = 0, 40
        paths.append(_write(tmp_path / f"f{k}.dcm", img, series=uid, InstanceNumber=k))
    paths[1].write_bytes(paths[1].read_bytes()[:-10])  # the middle one's pixels cut short
    (preview,) = make_previews(paths).previews
    assert _pixels(preview.png)[2, 2] == 0  # f0: nearest neighbour, lower one first


def test_time_box_skips_the_rest(tmp_path: Path) -> None:
    paths = [
        _write(tmp_path / f"s{k}.dcm", np.full((4, 4), k, np.uint16), InstanceNumber=1)
        for k in range(4)
    ]
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0  # every look at the clock costs a second
        return now[0]

    result = make_previews(paths, budget=7.5, clock=clock)
    assert 0 < len(result.previews) < 4
    assert all(s.reason == "time limit for previews reached" for s in result.skipped)
    assert len(result.previews) + len(result.skipped) == 4
    none = make_previews(paths, budget=0.5, clock=clock)
    assert none.previews == () and none.skipped == ()  # ran out while reading headers


def test_series_limit(tmp_path: Path) -> None:
    paths = [_write(tmp_path / f"s{k}.dcm", np.zeros((2, 2), np.uint16)) for k in range(3)]
    result = make_previews(paths, max_previews=2)
    assert len(result.previews) == 2
    assert [s.reason for s in result.skipped] == ["more than 2 series"]


def test_synthetic_study_previews_survive_the_manifest(tmp_path: Path) -> None:
    info = write_study(tmp_path / "st", target_bytes=400_000, series=2, seed=5, rows=64, cols=64)
    del info
    paths = sorted(p for p in (tmp_path / "st").rglob("*") if p.is_file())
    previews = offer_previews(paths)
    assert len(previews) == 2
    series_uids = {str(dcmread(p, stop_before_pixels=True).SeriesInstanceUID) for p in paths[:-1]}
    assert {p.series for p in previews} <= series_uids
    for p in previews:
        arr = _pixels(p.png)
        assert arr.shape == (p.h, p.w) and arr.std() > 10  # a phantom, not a flat field
    m = Manifest(files=(FileEntry("a", 1, 0, b"\0" * 16),), previews=previews)
    assert decode_manifest(encode_manifest(m)).previews == previews


def test_large_image_is_mapped_in_bands_like_a_whole(tmp_path: Path) -> None:
    """A 2048 x 1536 image spans several bands; the result equals the whole-image maths."""
    rng = np.random.default_rng(3)
    stored = rng.integers(0, 4096, (2048, 1536), dtype=np.uint16)
    path = _write(
        tmp_path / "big.dcm",
        stored,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=1500,
        WindowWidth=3000,
        PhotometricInterpretation="MONOCHROME1",
    )
    got = _render(path).astype(int)
    assert got.shape == (128, 96)
    hu = stored.astype(np.float64) * 2 - 1000
    grey = 1 - np.clip((hu - (1500 - 0.5)) / (3000 - 1) + 0.5, 0, 1)
    expected = grey.reshape(128, 16, 96, 16).mean(axis=(1, 3))
    assert np.abs(got - np.rint(expected * 255)).max() <= 1
    no_window = _write(tmp_path / "mm.dcm", stored)  # min..max over all bands
    grey = (stored - stored.min()) / (stored.max() - stored.min())
    expected = grey.reshape(128, 16, 96, 16).mean(axis=(1, 3))
    assert np.abs(_render(no_window).astype(int) - np.rint(expected * 255)).max() <= 1
