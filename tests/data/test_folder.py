"""A messy folder of real-world files: every readable image loads, every other file is listed, none crash."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelless.data.folder import read_folder
from labelless.data.sources import load_dataset
from labelless.errors import UserError

RNG = np.random.default_rng(2)


def noise(height: int, width: int, channels: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, channels), dtype=np.uint8).squeeze()


def save(path: Path, image: Image.Image, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def jpeg_bytes(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(noise(height, width)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture
def messy(tmp_path: Path) -> tuple[Path, list[str]]:
    """Seven readable images of mixed sizes and modes, four unreadable files, one hidden file."""
    save(tmp_path / "a_rgb.png", Image.fromarray(noise(20, 30)))
    save(tmp_path / "b_rgba.png", Image.fromarray(noise(20, 20, 4)))
    save(tmp_path / "c_gray.jpg", Image.fromarray(noise(40, 30, 1)))
    save(tmp_path / "d_palette.gif", Image.fromarray(noise(20, 20)).convert("P"))
    save(tmp_path / "e_16bit.png", Image.fromarray(RNG.integers(0, 65536, (20, 20), dtype=np.uint16)))
    (tmp_path / "f_corrupt.png").write_bytes(RNG.integers(0, 256, 500, dtype=np.uint8).tobytes())
    (tmp_path / "g_empty.png").write_bytes(b"")
    (tmp_path / "h_truncated.jpg").write_bytes(jpeg_bytes(64, 64)[:400])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    save(tmp_path / "sub" / "deeper" / "i.png", Image.fromarray(noise(50, 50)))
    save(tmp_path / "sub" / "j.webp", Image.fromarray(noise(10, 12)))
    readable = ["a_rgb.png", "b_rgba.png", "c_gray.jpg", "d_palette.gif", "e_16bit.png", "sub/deeper/i.png",
                "sub/j.webp"]
    return tmp_path, [str(tmp_path / r) for r in readable]


def test_messy_folder_loads_readable_and_lists_the_rest(messy):
    root, readable = messy
    with pytest.warns(UserWarning, match=r"skipped 4 file\(s\)") as caught:
        store = read_folder(root, progress=False)
    assert store.images.shape == (7, 64, 64, 3)  # mixed sizes → 64 px, any colour → RGB
    assert store.paths == readable
    assert store.labels is None
    assert [p for p, _ in store.skipped] == [str(root / n) for n in
                                             ("f_corrupt.png", "g_empty.png", "h_truncated.jpg", "notes.txt")]
    reasons = dict(store.skipped)
    assert reasons[str(root / "g_empty.png")] == "empty file"
    assert reasons[str(root / "notes.txt")] == "not an image Pillow can read"
    assert "truncated" in reasons[str(root / "h_truncated.jpg")].lower()
    assert ".DS_Store" not in str(caught[0].message)
    assert "mixed sizes" in store.source


def test_image_size_resizes_short_side_and_crops_centre(tmp_path):
    wide = np.zeros((40, 100, 3), np.uint8)
    wide[:, 20:80] = 200  # the central 40×40 square plus a margin wider than the resampling kernel
    save(tmp_path / "wide.png", Image.fromarray(wide))
    store = read_folder(tmp_path, image_size=16, progress=False)
    assert store.images.shape == (1, 16, 16, 3)
    assert (store.images == 200).all()  # only the central square survives


def test_equal_sizes_keep_native_pixels_exactly(tmp_path):
    rgb = noise(12, 10)
    rgba = noise(12, 10, 4)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255
    palette = Image.fromarray(noise(12, 10)).convert("P")
    save(tmp_path / "1.png", Image.fromarray(rgb))
    save(tmp_path / "2.png", Image.fromarray(rgba))
    save(tmp_path / "3.gif", palette)
    store = read_folder(tmp_path, progress=False)
    assert store.images.shape == (3, 12, 10, 3) and store.source.endswith("native)")
    assert np.array_equal(store.images[0].numpy(), rgb)
    assert store.images[1, 0, 0].tolist() == [255, 255, 255]  # fully transparent → white
    assert store.images[1, 0, 1].tolist() == rgba[0, 1, :3].tolist()  # opaque: unchanged
    assert np.array_equal(store.images[2].numpy(), np.asarray(palette.convert("RGB")))


def test_all_gray_gives_one_channel_and_16_bit_is_scaled(tmp_path):
    gray = noise(8, 8, 1)
    wide = np.array([[0, 257 * 100, 257 * 128, 65535, 300, 128, 129, 65534]] * 8, dtype=np.uint16)
    save(tmp_path / "8bit.png", Image.fromarray(gray))
    save(tmp_path / "16bit.png", Image.fromarray(wide))
    save(tmp_path / "mono.png", Image.fromarray(noise(8, 8, 1) > 127))
    store = read_folder(tmp_path, progress=False)
    assert store.images.shape == (3, 8, 8, 1)
    assert store.images[0, 0, :, 0].tolist() == [0, 100, 128, 255, 1, 0, 1, 255]  # 16bit.png sorts first
    assert np.array_equal(store.images[1, ..., 0].numpy(), gray)
    assert set(store.images[2].unique().tolist()) <= {0, 255}


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: a 20-wide, 10-high file shows 10 wide, 20 high
    save(tmp_path / "phone.jpg", Image.fromarray(noise(10, 20)), exif=exif)
    assert read_folder(tmp_path, progress=False).images.shape == (1, 20, 10, 3)


def test_big_jpeg_is_drafted_and_max_pixels_skips(tmp_path):
    (tmp_path / "big.jpg").write_bytes(jpeg_bytes(1200, 1600))
    assert read_folder(tmp_path, image_size=32, progress=False).images.shape == (1, 32, 32, 3)
    with pytest.warns(UserWarning), pytest.raises(UserError, match="max_pixels"):
        read_folder(tmp_path, max_pixels=1000, progress=False)


def test_labels_from_first_level_folders(tmp_path):
    save(tmp_path / "dog" / "1.png", Image.fromarray(noise(8, 8)))
    save(tmp_path / "cat" / "1.png", Image.fromarray(noise(8, 8)))
    save(tmp_path / "cat" / "2.png", Image.fromarray(noise(8, 8)))
    save(tmp_path / "dog" / "puppies" / "3.png", Image.fromarray(noise(8, 8)))
    (tmp_path / "bird").mkdir()
    (tmp_path / "bird" / "broken.png").write_bytes(b"PNG?")
    (tmp_path / "README.md").write_text("class folders below")
    with pytest.warns(UserWarning, match="skipped 2"):
        store = read_folder(tmp_path, labels_from_folders=True, progress=False)
    assert store.class_names == ["cat", "dog"]  # bird has no readable image
    assert store.labels.tolist() == [0, 0, 1, 1]
    assert store.paths[-1] == str(tmp_path / "dog" / "puppies" / "3.png")
    assert dict(store.skipped)[str(tmp_path / "README.md")] == "not inside a class subfolder (labels_from_folders)"
    with pytest.warns(UserWarning, match="skipped 2"):
        assert read_folder(tmp_path, progress=False).labels is None


def test_a_folder_and_a_link_to_it_list_its_images_once_under_the_real_path(tmp_path):
    """'a_link' sorts before 'photos' and would be walked first in name order: the real folder wins at
    its level, a second link is not followed again, and a link to a folder outside is followed."""
    save(tmp_path / "root" / "photos" / "1.png", Image.fromarray(noise(8, 8)))
    save(tmp_path / "outside" / "2.png", Image.fromarray(noise(8, 8)))
    root = tmp_path / "root"
    os.symlink(root / "photos", root / "a_link")
    os.symlink(root / "photos", root / "photos" / "loop")
    os.symlink(tmp_path / "outside", root / "z_outside")
    store = read_folder(root, progress=False)
    assert store.paths == [str(root / "photos" / "1.png"), str(root / "z_outside" / "2.png")]


def test_non_utf8_names(tmp_path):
    folder = os.path.join(os.fsencode(tmp_path), b"caf\xe9")
    os.mkdir(folder)
    name = os.path.join(folder, b"\xff\xfe.png")
    with open(name, "wb") as f:
        Image.fromarray(noise(8, 8)).save(f, "PNG")
    broken = os.path.join(folder, b"broken\xe9.png")
    open(broken, "wb").close()
    with pytest.warns(UserWarning, match="broken\ufffd.png"):  # shown with a replacement character
        store = read_folder(os.fsencode(tmp_path), labels_from_folders=True, progress=False)
    assert store.paths == [os.fsdecode(name)]
    assert store.skipped == [(os.fsdecode(broken), "empty file")]
    assert store.class_names == [os.fsdecode(b"caf\xe9")]
    with Image.open(store.paths[0]) as reopened:  # the stored path opens again
        reopened.verify()


def test_unusable_folders_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="holds no files"):
        read_folder(tmp_path)
    with pytest.raises(UserError, match="not a directory"):
        read_folder(tmp_path / "missing")
    (tmp_path / "a.txt").write_text("x")
    with pytest.warns(UserWarning), pytest.raises(UserError, match="none of the 1 files") as error:
        read_folder(tmp_path)
    assert "\n" not in str(error.value)


def test_tilde_means_home(tmp_path, monkeypatch):
    # README's `labelless run --dataset folder:~/photos`: the shell does not expand a ~ after "folder:"
    save(tmp_path / "photos" / "a.png", Image.fromarray(noise(8, 8)))
    monkeypatch.setenv("HOME", str(tmp_path))
    store = load_dataset("folder:~/photos", progress=False)
    assert store.paths == [str(tmp_path / "photos" / "a.png")]
