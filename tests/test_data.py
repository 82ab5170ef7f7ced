"""Tests for the data worlds (ldm_minimal.data): determinism, captions vs pixels, caches, emoji, HF sources."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest
import torch

import ldm_minimal.data as data
from ldm_minimal.data import shapes as S
from ldm_minimal.data.emoji import emoji_entries, group_names, render_emoji, subgroup_names


# ---------------------------------------------------------------------------------------------------------------
# shapes: determinism


@pytest.mark.parametrize("resolution", [32, 64])
def test_shapes_same_index_and_seed_give_identical_bytes(resolution):
    cfg = S.ShapesConfig(resolution=resolution, seed=7)
    for i in (0, 1, 123, 99_999):
        a, b = S.render_sample(i, cfg), S.render_sample(i, S.ShapesConfig(resolution=resolution, seed=7))
        assert a.image.shape == (resolution, resolution, 3) and a.image.dtype == np.uint8
        assert a.image.tobytes() == b.image.tobytes()
        assert a.semantic.tobytes() == b.semantic.tobytes()
        assert a.caption == b.caption and a.objects == b.objects


def test_shapes_order_independent_and_seed_dependent():
    cfg = S.ShapesConfig(seed=0)
    forward = [S.render_sample(i, cfg).image for i in range(20)]
    backward = [S.render_sample(i, cfg).image for i in reversed(range(20))][::-1]
    assert all(np.array_equal(f, b) for f, b in zip(forward, backward))
    other = [S.render_sample(i, S.ShapesConfig(seed=1)).image for i in range(20)]
    assert sum(np.array_equal(f, o) for f, o in zip(forward, other)) <= 1
    assert len({f.tobytes() for f in forward}) == 20  # different indices -> different pictures


def test_shapes_golden_sample():
    # Pins the generator: sample 0 of seed 0 must not change silently between versions or machines.
    import hashlib

    s = S.render_sample(0, S.ShapesConfig(resolution=32, seed=0))
    assert s.caption == "a large red heart at the top and a small cyan heart at the top right"
    assert [o.bbox for o in s.objects] == [(11, 0, 21, 10), (21, 0, 28, 7)]
    assert hashlib.sha1(s.image.tobytes()).hexdigest() == "9f797f4f5c57973385896621f766bbda8406e132"
    assert hashlib.sha1(s.semantic.tobytes()).hexdigest() == "acf85ccb2935aca57c79afc3488f702928b920b3"


# ---------------------------------------------------------------------------------------------------------------
# shapes: captions and labels match the drawn pixels


@pytest.mark.parametrize("resolution", [32, 64])
def test_captions_match_drawn_objects(resolution):
    cfg = S.ShapesConfig(resolution=resolution, seed=3)
    cell = resolution / 3
    bg = np.array(S.BACKGROUND, dtype=np.float64)
    n_large = n_small = 0
    area = {"small": [], "large": []}
    for i in range(150):
        s = S.render_sample(i, cfg)
        assert 1 <= len(s.objects) <= 3
        parsed = S.parse_caption(s.caption)
        assert parsed == [{k: v for k, v in o.as_dict().items() if k != "bbox"} for o in s.objects]
        assert len({o.position for o in s.objects}) == len(s.objects)  # one object per cell
        covered = np.zeros(s.semantic.shape, dtype=bool)
        for o in s.objects:
            x0, y0, x1, y1 = o.bbox
            sem = s.semantic[y0:y1, x0:x1]
            label = 1 + S.SHAPES.index(o.shape)
            mask = sem == label
            assert mask.sum() >= 0.25 * sem.size, (i, o)  # the shape fills a good part of its box
            labels, counts = np.unique(sem[sem > 0], return_counts=True)
            assert labels[np.argmax(counts)] == label  # the semantic map inside the box is the named shape
            mean = s.image[y0:y1, x0:x1][mask].astype(np.float64).mean(0)
            target = np.array(S.COLOURS[o.colour], dtype=np.float64)
            assert np.abs(mean - target).max() < 60, (o.colour, mean)  # close (thin shapes have many edge pixels)
            inside = s.image[y0:y1, x0:x1][mask]
            assert (inside == target.astype(np.uint8)).all(1).any()  # fully covered pixels: exactly that colour
            others = [np.array(c) for name, c in S.COLOURS.items() if name != o.colour]
            assert all(np.linalg.norm(mean - target) < np.linalg.norm(mean - c) for c in others)
            row, col = divmod(S.POSITIONS.index(o.position), 3)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            assert col * cell <= cx <= (col + 1) * cell and row * cell <= cy <= (row + 1) * cell, (o, cx, cy)
            area[o.size].append((x1 - x0) * (y1 - y0))
            covered[y0:y1, x0:x1] = True
        # outside every box the picture is the plain background and the semantic map is 0
        assert (s.semantic[~covered] == 0).all()
        assert np.abs(s.image[~covered].astype(np.float64) - bg).max() == 0
        n_large += sum(o.size == "large" for o in s.objects)
        n_small += sum(o.size == "small" for o in s.objects)
    assert n_large > 20 and n_small > 20
    assert min(area["large"]) > max(area["small"])  # every large box is bigger than every small one


def test_antialiased_edges():
    pure = np.array([S.BACKGROUND, *S.COLOURS.values()], dtype=np.int64)  # (K, 3)

    def blended_pixels(img):  # pixels that are neither the background nor an object colour
        return int((np.abs(img.reshape(-1, 1, 3).astype(np.int64) - pure[None]).sum(-1) > 0).all(1).sum())

    for i in range(5):
        assert blended_pixels(S.render_sample(i, S.ShapesConfig(resolution=32)).image) > 10  # rendered larger, reduced
        assert blended_pixels(S.render_sample(i, S.ShapesConfig(resolution=32, supersample=1)).image) == 0


def test_class_ids_and_names():
    cfg = S.ShapesConfig(min_objects=1, max_objects=1, seed=2)
    assert S.NUM_CLASSES == len(S.SHAPES) * len(S.COLOURS) and len(S.COLOURS) >= 6
    for i in range(40):
        s = S.render_sample(i, cfg)
        (o,) = s.objects
        assert s.class_id == S.SHAPES.index(o.shape) * len(S.COLOURS) + list(S.COLOURS).index(o.colour)
        assert S.class_name(s.class_id) == f"{o.colour} {o.shape}"
        assert S.class_id_for(o.shape, o.colour) == s.class_id
    multi = [S.render_sample(i, S.ShapesConfig(min_objects=2, max_objects=3)) for i in range(10)]
    assert all(m.class_id == -1 for m in multi)
    with pytest.raises(ValueError, match="class_id"):
        S.class_name(S.NUM_CLASSES)


def test_parse_caption_round_trip_and_errors():
    objs = [
        S.ShapeObject("heart", "pink", "small", "top left"),
        S.ShapeObject("star", "yellow", "large", "top"),
        S.ShapeObject("triangle", "cyan", "small", "bottom right"),
    ]
    text = S.caption_for(objs)
    assert text == (
        "a small pink heart at the top left, a large yellow star at the top and a small cyan triangle at the bottom right"
    )
    assert [d["position"] for d in S.parse_caption(text)] == ["top left", "top", "bottom right"]
    assert S.parse_caption("A Large RED circle in the center.") == [
        {"shape": "circle", "colour": "red", "size": "large", "position": "center"}
    ]
    with pytest.raises(ValueError, match="Cannot parse"):
        S.parse_caption("a large red dragon in the center")
    with pytest.raises(ValueError, match="Cannot parse"):
        S.parse_caption("a large red circle in the center and a cat")


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="max_objects"):
        S.ShapesConfig(max_objects=10)
    with pytest.raises(ValueError, match="overlap"):
        S.ShapesConfig(small_range=(0.5, 0.9))
    assert S.shapes_preset("shapes64").resolution == 64
    assert S.shapes_preset("single32", seed=4).seed == 4
    with pytest.raises(ValueError, match="shapes32"):
        S.shapes_preset("nope")


# ---------------------------------------------------------------------------------------------------------------
# load_world, caching, torch datasets


def test_load_world_shapes_columns_splits_and_cache(tmp_path, monkeypatch):
    train = data.load_world("shapes", "train", resolution=32, size=24, cache_dir=tmp_path)
    assert {"image", "caption", "class_id", "objects", "semantic"} <= set(train.column_names)
    assert len(train) == 24
    row = train[3]
    s = S.render_sample(3, S.ShapesConfig(resolution=32, seed=0))
    assert np.array_equal(np.asarray(row["image"]), s.image)  # PNG is lossless: the cache holds the rendering
    assert np.array_equal(np.asarray(row["semantic"]), s.semantic) and row["semantic"].mode == "L"
    assert row["caption"] == s.caption and json.loads(row["objects"])[0]["shape"] == s.objects[0].shape
    test = data.load_world("shapes", "test", resolution=32, size=24, cache_dir=tmp_path)
    assert set(train["caption"]).isdisjoint(test["caption"]) or train["caption"] != test["caption"]
    assert not any(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(train["image"], test["image"]))

    # the second call loads from disk: the generators must not run again
    def boom(*a, **k):
        raise AssertionError("regenerated a cached world")

    monkeypatch.setattr(data, "build_shapes", boom)
    monkeypatch.setattr(S, "render_sample", boom)
    again = data.load_world("shapes", "train", resolution=32, size=24, cache_dir=tmp_path)
    assert again["caption"] == train["caption"]
    assert data.world_cache_path("shapes", "train", 32, 24, cache_dir=tmp_path).is_dir()
    with pytest.raises(AssertionError, match="regenerated"):  # a different request is a different cache entry
        data.load_world("shapes", "train", resolution=32, size=25, cache_dir=tmp_path)


def test_world_dataset_tensors(tmp_path):
    ds = data.world_dataset("shapes", "train", resolution=32, size=8, cache_dir=tmp_path, max_objects=2)
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1 and item["image"].max() <= 1 and item["image"].max() > 0.5
    assert item["semantic"].shape == (32, 32) and item["semantic"].dtype == torch.int64
    batch = data.collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 32, 32) and batch["class_id"].shape == (4,)
    assert isinstance(batch["caption"], list) and len(batch["caption"]) == 4
    assert isinstance(batch["objects"][0], str)


def test_shapes_dataset_on_the_fly_matches_cached_world(tmp_path):
    fly = data.ShapesDataset(S.ShapesConfig(resolution=64, seed=0), length=6)
    cached = data.world_dataset("shapes", "train", resolution=64, size=6, cache_dir=tmp_path)
    for i in range(6):
        a, b = fly[i], cached[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["semantic"], b["semantic"])
        assert a["caption"] == b["caption"] and a["class_id"] == b["class_id"]
    loader = torch.utils.data.DataLoader(fly, batch_size=3, collate_fn=data.collate)
    first = next(iter(loader))
    assert first["image"].shape == (3, 3, 64, 64)
    assert first["image"].min() >= -1.0 and first["image"].max() <= 1.0
    with pytest.raises(IndexError):
        fly[6]


def test_unknown_world_and_options(tmp_path):
    with pytest.raises(ValueError) as e:
        data.load_world("mnist", cache_dir=tmp_path)
    for valid in ("shapes", "emoji", "hf:", "folder:", "parquet:"):
        assert valid in str(e.value)
    with pytest.raises(ValueError, match="test"):
        data.load_world("shapes", split="validation", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="max_objects"):
        data.load_world("shapes", size=4, cache_dir=tmp_path, max_object=2)
    assert "shapes" in data.list_worlds()


# ---------------------------------------------------------------------------------------------------------------
# emoji


def test_emoji_entries_and_pictures():
    entries = emoji_entries()
    assert len(entries) > 1000
    assert all(e.caption.strip() for e in entries)
    names = {e.char: e for e in entries}
    assert names["\U0001F600"].caption == "grinning face"
    assert names["\U0001F600"].group == "Smileys & Emotion"
    assert group_names()[names["\U0001F600"].group_id] == "Smileys & Emotion"
    assert subgroup_names()[names["\U0001F600"].subgroup_id] == names["\U0001F600"].subgroup == "face-smiling"
    assert len({e.group for e in entries}) >= 8 and len({e.subgroup for e in entries}) >= 50
    assert len(emoji_entries(skin_tones=True)) > len(entries)
    for res in (32, 64):
        img = render_emoji(names["\U0001F600"], res)
        assert img.shape == (res, res, 3) and img.dtype == np.uint8
        corners = img[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert (corners >= 250).all()  # composited onto white
        assert img.std() > 20  # and there is a colourful picture in the middle


def test_load_world_emoji(tmp_path):
    ds = data.load_world("emoji", "test", resolution=32, size=16, cache_dir=tmp_path)
    assert len(ds) == 16 and {"image", "caption", "class_id", "group", "subgroup"} <= set(ds.column_names)
    assert all(c for c in ds["caption"])
    assert ds["class_id"] == ds["group_id"]
    item = data.WorldDataset(ds)[0]
    assert item["image"].shape == (3, 32, 32) and item["image"][:, 0, 0].min() > 0.95  # white corner
    sub = data.load_world("emoji", "test", resolution=32, size=16, cache_dir=tmp_path, label="subgroup")
    assert sub["class_id"] == sub["subgroup_id"]


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face sources: a local image folder and a parquet file written here


def _write_pictures(folder, n=6):
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = "cats" if i % 2 else "dogs"
        (folder / label).mkdir(parents=True, exist_ok=True)
        w, h = (48, 40) if i % 3 else (40, 56)  # not square: centre-cropped
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        name = f"{label}/img{i}.png"
        Image.fromarray(arr).save(folder / name)
        rows.append((name, f"picture number {i}"))
    return rows


def test_load_hf_images_from_image_folder(tmp_path):
    folder = tmp_path / "pics"
    rows = _write_pictures(folder)
    labelled = data.load_hf_images(str(folder), resolution=16, cache_dir=tmp_path / "hf")
    assert labelled.column_names == ["image", "caption", "class_id"] and len(labelled) == 6
    assert labelled[0]["image"].size == (16, 16) and labelled[0]["image"].mode == "RGB"
    assert sorted(labelled["class_id"]) == [0, 0, 0, 1, 1, 1]  # sub-folders become ClassLabel ids
    assert set(labelled["caption"]) == {""}

    world = data.load_world(f"folder:{folder}", resolution=16, cache_dir=tmp_path / "c")
    assert sorted(world["class_id"]) == [0, 0, 0, 1, 1, 1]
    # a metadata file with captions changes the folder, so the world gets a new cache entry
    with open(folder / "metadata.csv", "w") as f:
        f.write("file_name,text\n" + "".join(f"{n},{c}\n" for n, c in rows))
    ds = data.load_hf_images(str(folder), caption_column="text", resolution=16, cache_dir=tmp_path / "hf2")
    assert sorted(ds["caption"]) == sorted(c for _, c in rows)
    world = data.load_world(f"folder:{folder}", resolution=16, cache_dir=tmp_path / "c", caption_column="text")
    assert sorted(world["caption"]) == sorted(c for _, c in rows)
    item = data.WorldDataset(world)[0]
    assert item["image"].shape == (3, 16, 16) and -1 <= item["image"].min() and item["image"].max() <= 1

    with pytest.raises(ValueError) as e:
        data.load_hf_images(str(folder), caption_column="caption", cache_dir=tmp_path / "hf")
    assert "Available columns" in str(e.value) and "text" in str(e.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_world(f"folder:{tmp_path / 'missing'}", cache_dir=tmp_path / "c")


def test_load_hf_images_from_parquet(tmp_path):
    import io

    import datasets
    from PIL import Image

    rng = np.random.default_rng(1)
    pngs = []
    for _ in range(5):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (30, 20, 3), dtype=np.uint8)).save(buf, format="PNG")
        pngs.append({"bytes": buf.getvalue(), "path": None})
    raw = datasets.Dataset.from_dict(
        {"picture": pngs, "prompt": [f"thing {i}" for i in range(5)], "kind": ["b", "a", "b", "c", "a"]},
        features=datasets.Features(
            {"picture": datasets.Image(), "prompt": datasets.Value("string"), "kind": datasets.Value("string")}
        ),
    )
    path = tmp_path / "set.parquet"
    raw.to_parquet(str(path))
    ds = data.load_world(
        f"parquet:{path}", resolution=8, size=4, cache_dir=tmp_path / "c",
        image_column="picture", caption_column="prompt", class_column="kind",
    )  # fmt: skip
    assert len(ds) == 4 and ds["caption"] == ["thing 0", "thing 1", "thing 2", "thing 3"]
    assert ds["class_id"] == [1, 0, 1, 2]  # string labels -> ids in sorted order
    assert ds[0]["image"].size == (8, 8)
    with pytest.raises(ValueError, match="Available columns: picture, prompt, kind"):
        data.load_hf_images(str(path), image_column="image", cache_dir=tmp_path / "hf")
    with pytest.raises(FileNotFoundError):
        data.load_hf_images(str(tmp_path / "nope.parquet"))


def test_center_crop_resize_keeps_the_middle():
    from PIL import Image

    from ldm_minimal.data.hf import center_crop_resize

    arr = np.zeros((40, 80, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)  # red bands left and right are cropped away
    arr[:, 60:] = (255, 0, 0)
    arr[:, 20:60] = (0, 0, 255)
    out = np.asarray(center_crop_resize(Image.fromarray(arr), 10))
    assert out.shape == (10, 10, 3) and (out[..., 2] > 240).all() and (out[..., 0] < 15).all()
    rgba = Image.new("RGBA", (12, 12), (0, 0, 0, 0))  # transparent -> white, not black
    assert (np.asarray(center_crop_resize(rgba, 8)) == 255).all()
