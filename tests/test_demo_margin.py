"""The margin demonstration writes a non-blank PNG with one panel per γ."""
import numpy as np
from matplotlib.image import imread

from labelless.demo_margin import demo_margin


def test_demo_margin_writes_a_non_blank_png(tmp_path):
    path = demo_margin(tmp_path / "margin.png", gammas=(0, 0.1), steps=40)
    assert path == tmp_path / "margin.png" and path.is_file()
    pixels = imread(path)[..., :3]
    assert pixels.shape[1] > pixels.shape[0]  # panels side by side
    assert pixels.std() > 0.05  # coloured regions, not a blank canvas
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
