"""Our metrics against ports of the reference code (written here from reading it) or the library itself, on
the same inputs: ADM's ManifoldEstimator (precision/recall), ADM's uint8 conversion, Chong & Forsyth's
FID-infinity, torch-fidelity's KID, and the reference-statistics validation."""

import warnings

import numpy as np
import pytest
import torch

from bench.errors import CorruptInputError, OptionError, UserError
from bench.metrics import (
    FeatureExtractor,
    NpzShardWriter,
    fid_infinity,
    kid,
    merge_shards,
    precision_recall,
    read_npz,
    statistics,
    to_uint8_counted,
    write_samples_npz,
    write_stats_npz,
)
from bench.metrics.frechet import frechet_distance, frechet_distance_scipy

# ------------------------------------------------- port of ADM's ManifoldEstimator / DistanceBlock
# openai/guided-diffusion evaluations/evaluator.py at 22e0df8: ManifoldEstimator (:205-359), DistanceBlock
# (:362-411), _batch_pairwise_distances (:414-430). TF's graph is replaced by numpy with the same casts:
# features fed as float32, cast to float16, norms / Gram matrix in float16 (summed exactly, rounded once),
# float16 arithmetic, float32 fallback for a block with a non-finite entry, comparisons in float32.


def _adm_pairwise(u, v, half):
    if half:
        u, v = u.astype(np.float16), v.astype(np.float16)
        norm_u = np.square(u).astype(np.float64).sum(1).astype(np.float32).astype(np.float16).reshape(-1, 1)
        norm_v = np.square(v).astype(np.float64).sum(1).astype(np.float32).astype(np.float16).reshape(1, -1)
        gram = (u.astype(np.float64) @ v.astype(np.float64).T).astype(np.float32).astype(np.float16)
        return np.maximum(norm_u - np.float16(2) * gram + norm_v, np.float16(0))
    norm_u = np.square(u).sum(1).reshape(-1, 1)
    norm_v = np.square(v).sum(1).reshape(1, -1)
    return np.maximum(norm_u - 2 * (u @ v.T) + norm_v, np.float32(0))


class AdmDistanceBlock:
    def __init__(self, half=True):
        self.half = half

    def pairwise_distances(self, u, v):
        u, v = np.asarray(u, np.float32), np.asarray(v, np.float32)  # the float32 placeholders
        d16 = _adm_pairwise(u, v, self.half)
        if np.isfinite(d16).all():  # tf.cond(reduce_all(is_finite(distance_block_16)), ...)
            return d16.astype(np.float32)
        return _adm_pairwise(u, v, False).astype(np.float32)

    def less_thans(self, batch_1, radii_1, batch_2, radii_2):
        dist32 = self.pairwise_distances(batch_1, batch_2)[..., None]
        return np.any(dist32 <= radii_2, axis=1), np.any(dist32 <= radii_1[:, None], axis=0)


class AdmManifoldEstimator:
    def __init__(self, row_batch_size=10000, col_batch_size=10000, nhood_sizes=(3,), half=True):
        self.distance_block = AdmDistanceBlock(half)
        self.row_batch_size, self.col_batch_size = row_batch_size, col_batch_size
        self.nhood_sizes = list(nhood_sizes)

    def manifold_radii(self, features):
        n = len(features)
        radii = np.zeros([n, len(self.nhood_sizes)], dtype=np.float32)
        distance_batch = np.zeros([self.row_batch_size, n], dtype=np.float32)
        seq = np.arange(max(self.nhood_sizes) + 1, dtype=np.int32)
        for b1 in range(0, n, self.row_batch_size):
            e1 = min(b1 + self.row_batch_size, n)
            for b2 in range(0, n, self.col_batch_size):
                e2 = min(b2 + self.col_batch_size, n)
                distance_batch[0 : e1 - b1, b2:e2] = self.distance_block.pairwise_distances(
                    features[b1:e1], features[b2:e2]
                )
            radii[b1:e1, :] = np.partition(distance_batch[0 : e1 - b1, :], seq, axis=1)[:, self.nhood_sizes]
        return radii

    def evaluate_pr(self, features_1, radii_1, features_2, radii_2):
        status_1 = np.zeros([len(features_1), radii_2.shape[1]], dtype=bool)
        status_2 = np.zeros([len(features_2), radii_1.shape[1]], dtype=bool)
        for b1 in range(0, len(features_1), self.row_batch_size):
            e1 = b1 + self.row_batch_size
            for b2 in range(0, len(features_2), self.col_batch_size):
                e2 = b2 + self.col_batch_size
                in_1, in_2 = self.distance_block.less_thans(
                    features_1[b1:e1], radii_1[b1:e1], features_2[b2:e2], radii_2[b2:e2]
                )
                status_1[b1:e1] |= in_1
                status_2[b2:e2] |= in_2
        return np.mean(status_2.astype(np.float64), axis=0), np.mean(status_1.astype(np.float64), axis=0)

    def compute_prec_recall(self, ref, sample):  # Evaluator.compute_prec_recall (:194-202)
        r1, r2 = self.manifold_radii(ref), self.manifold_radii(sample)
        pr = self.evaluate_pr(ref, r1, sample, r2)
        return float(pr[0][0]), float(pr[1][0])


@pytest.fixture(autouse=True)
def _quiet_overflow():
    with warnings.catch_warnings():  # the float16 port overflows on purpose (ADM's fallback case)
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _pr_features(seed=0, n_ref=300, n_smp=260, d=64):
    """Non-negative features like Inception's pool_3 (post-ReLU averages), so float16 ties are frequent."""
    rng = np.random.default_rng(seed)
    ref = np.abs(rng.standard_normal((n_ref, d)) * 0.6 + 0.3).astype(np.float32)
    smp = np.abs(rng.standard_normal((n_smp, d)) * 0.5 + 0.35).astype(np.float32)
    return ref, smp


def test_precision_recall_equal_adm_manifold_estimator_float16_and_float32():
    ref, smp = _pr_features()
    smp[:40] *= (
        60.0  # far-out samples: float16 overflows in the blocks holding them -> ADM's float32 fallback
    )
    for half, distances in ((True, "float16"), (False, "float32")):
        for block in (64, 10000):  # ADM's 10000 (one block) and a tiling with per-block fallback decisions
            adm = AdmManifoldEstimator(block, block, half=half).compute_prec_recall(ref, smp)
            ours = precision_recall(ref, smp, k=3, block=block, distances=distances)
            assert ours == adm, (distances, block, ours, adm)
    # float16 rounding creates ties with the radii, and ties count as inside: here one more reference point
    ref, smp = _pr_features(0, 500, 500, 64)
    f16, f32 = (precision_recall(ref, smp, distances=dist) for dist in ("float16", "float32"))
    assert f16 == AdmManifoldEstimator(half=True).compute_prec_recall(ref, smp)
    assert f32 == AdmManifoldEstimator(half=False).compute_prec_recall(ref, smp)
    assert f16[0] == f32[0] and f16[1] == f32[1] + 1 / 500
    with pytest.raises(OptionError, match="known: float16, float32, float64"):
        precision_recall(ref, smp, distances="bfloat16")


def test_float16_distance_block_is_bit_equal_to_the_port():
    from bench.metrics.precision_recall import _sq_dists_f16

    ref, smp = _pr_features(1, 120, 90, 48)
    ours = _sq_dists_f16(torch.from_numpy(ref), torch.from_numpy(smp)).numpy()
    np.testing.assert_array_equal(ours, AdmDistanceBlock(True).pairwise_distances(ref, smp))


# ------------------------------------------------------------------------------- ADM's uint8 conversion


def _adm_to_uint8(sample: torch.Tensor) -> np.ndarray:
    # guided-diffusion scripts/image_sample.py:60-62 at 22e0df8
    sample = ((sample + 1) * 127.5).clamp(0, 255).to(torch.uint8)
    return sample.permute(0, 2, 3, 1).contiguous().numpy()


def test_uint8_convention_is_adms_truncation_and_recorded_in_every_npz(tmp_path):
    from bench.data import to_uint8

    x = torch.rand(7, 3, 6, 5, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1  # out of range too
    adm = _adm_to_uint8(x)
    np.testing.assert_array_equal(to_uint8(x), adm)  # the default is ADM's
    np.testing.assert_array_equal(to_uint8_counted(x)[0], adm)
    np.testing.assert_array_equal(to_uint8(x, "truncate"), adm)  # Recipe.release_uint8's spelling
    rounded = np.clip(np.round((x.numpy() + 1) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(to_uint8(x, "round"), rounded)
    assert (to_uint8(x, "round").astype(int) - adm).mean() == pytest.approx(0.5, abs=0.05)
    with pytest.raises(OptionError, match="known: adm-truncate, round"):
        to_uint8(x, "floor")

    assert read_npz(write_samples_npz(tmp_path / "a.npz", adm)).uint8_convention == "adm-truncate"
    assert (
        read_npz(write_samples_npz(tmp_path / "r.npz", adm, uint8_convention=None)).uint8_convention is None
    )
    with np.load(tmp_path / "a.npz") as z:  # the ADM evaluator reads arr_0 and ignores the extra member
        assert str(z["uint8_convention"]) == "adm-truncate" and z["arr_0"].dtype == np.uint8
    alias = write_samples_npz(tmp_path / "t.npz", adm, uint8_convention="truncate")
    assert read_npz(alias).uint8_convention == "adm-truncate"  # recorded by its canonical name
    with NpzShardWriter(tmp_path / "round", shard_size=3, uint8_convention="round") as w:
        w.add(x)
    assert {read_npz(p).uint8_convention for p in w.paths} == {"round"}
    np.testing.assert_array_equal(read_npz(merge_shards(w.paths, tmp_path / "m.npz")).images(), rounded)
    assert read_npz(tmp_path / "m.npz").uint8_convention == "round"
    with pytest.raises(OptionError, match="resuming with 'adm-truncate'"):
        NpzShardWriter(tmp_path / "round", shard_size=3, resume=True)
    with pytest.raises(CorruptInputError, match="different conventions"):
        merge_shards([tmp_path / "a.npz", tmp_path / "m.npz"], tmp_path / "mixed.npz")


# ----------------------------------------------------------- port of Chong & Forsyth's FID-infinity


def _paper_fid_infinity(act, real_m, real_s, min_fake, num_points=15, fd=frechet_distance_scipy):
    """mchong6/FID_IS_infinity score_infinity.py:148-169 (calculate_FID_infinity_path after the activations):
    np.random.shuffle per size, np.cov, the scipy sqrtm FD, a least-squares line (LinearRegression) at 0."""
    act = act.copy()
    assert len(act) > min_fake
    fid_batches = np.linspace(min_fake, len(act), num_points).astype("int32")
    fids = []
    for size in fid_batches:
        np.random.shuffle(act)
        sub = act[:size]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fids.append(fd(sub.mean(0), np.cov(sub, rowvar=False), real_m, real_s))
    a = np.stack([1.0 / fid_batches, np.ones(len(fid_batches))], axis=1)
    slope, intercept = np.linalg.lstsq(a, np.asarray(fids), rcond=None)[0]
    return intercept


def _gaussian_features(n, d, fd, seed):
    """n features from N(delta, Q diag(s^2) Q^T) and the reference N(0, same sigma): true FD = |delta|^2 = fd."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scales = np.exp(-np.arange(d) / d)
    delta = rng.standard_normal(d)
    delta *= np.sqrt(fd) / np.linalg.norm(delta)
    return (rng.standard_normal((n, d)) * scales) @ q.T + delta, np.zeros(d), (q * scales**2) @ q.T


def test_fid_infinity_equals_the_papers_code_and_refuses_small_subsets():
    x, mu, sigma = _gaussian_features(1000, 32, 0.70, seed=1)
    r = fid_infinity(x, mu, sigma, seed=3)
    assert (r["n_min"], r["n_max"], len(r["ns"])) == (100, 1000, 15)  # N/10 (>= 2 x D = 64) to N
    np.random.seed(3)  # same seed -> the paper's code draws the same subsets
    assert r["fid_inf"] == pytest.approx(_paper_fid_infinity(x, mu, sigma, min_fake=100), rel=1e-6)

    x, mu, sigma = _gaussian_features(4000, 128, 0.70, seed=0)
    r = fid_infinity(x, mu, sigma, seed=0)
    assert (r["n_min"], r["n_max"]) == (400, 4000)
    assert r["fid_inf"] == pytest.approx(
        0.70, abs=0.1
    )  # the true FD (estimator noise + curvature at N/D ~ 3)
    # D = 128, N = 1000: the old default (smallest subset N/10 = 100 < D) fits r^2 = 0.99 to a wrong value
    small = x[:1000]
    np.random.seed(0)
    assert _paper_fid_infinity(small, mu, sigma, min_fake=100, fd=frechet_distance) < 0.2  # true: 0.70
    with pytest.raises(OptionError, match=r"1000 samples are too few for D = 128.*N >= 5 x 256 = 1280"):
        fid_infinity(small, mu, sigma)
    with pytest.raises(OptionError, match=r"smallest subset 100 is below 2 x D = 256"):
        fid_infinity(small, mu, sigma, min_n=100)


# -------------------------------------------------------------------------------- KID: torch-fidelity


def test_kid_equals_torch_fidelity_with_its_defaults():
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((1100, 16)), rng.standard_normal((1050, 16)) + 0.1
    mean, std = kid(a, b, subsets=5)  # torch-fidelity's subset size 1000 and seed 2020
    tf = kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=5, verbose=False)
    assert (mean, std) == (tf[KEY_METRIC_KID_MEAN], tf[KEY_METRIC_KID_STD])
    with pytest.raises(OptionError, match=r"subset size 1000 is larger than the sets \(900 samples"):
        kid(a[:900], b, subsets=5)
    with pytest.raises(ValueError):  # ... where torch-fidelity refuses as well
        kid_features_to_metric(torch.from_numpy(a[:900]), torch.from_numpy(b), kid_subsets=5, verbose=False)


# ------------------------------------------------------------------------ reference statistics on read


def test_reference_sigma_must_be_symmetric_psd(tmp_path):
    d = 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # every sqrtm-based FID (pytorch-fid, clean-fid, ADM) scores I against -I as 0: it must be caught on read
        assert frechet_distance_scipy(np.zeros(d), np.eye(d), np.zeros(d), -np.eye(d)) == pytest.approx(0.0)
    bad = {
        "neg.npz": -np.eye(d),
        "asym.npz": np.eye(d) + np.triu(np.ones((d, d)), 1),
        "negvar.npz": np.diag([1.0] * (d - 1) + [-0.5]),
        "indefinite.npz": np.eye(d)
        + 2 * (np.eye(d, k=1) + np.eye(d, k=-1)),  # positive diagonal, eigenvalue < 0
    }
    for name, sigma in bad.items():
        np.savez(tmp_path / name, mu=np.zeros(d), sigma=sigma)
        with pytest.raises(CorruptInputError, match=rf"{name}: sigma (has negative|is not)"):
            read_npz(tmp_path / name)
    np.savez(tmp_path / "spatial.npz", mu=np.zeros(d), sigma=np.eye(d), mu_s=np.zeros(2), sigma_s=-np.eye(2))
    with pytest.raises(CorruptInputError, match=r"spatial\.npz: sigma_s"):
        read_npz(tmp_path / "spatial.npz")
    # a singular covariance (N < D) stored in float32 is a covariance: accepted, FD unchanged
    x = np.random.default_rng(0).standard_normal((5, 64))
    mu, sigma = statistics(x)
    np.savez(tmp_path / "ok.npz", mu=mu, sigma=sigma.astype(np.float32))
    b = read_npz(tmp_path / "ok.npz")
    assert frechet_distance(mu, sigma, b.stats["mu"], b.stats["sigma"]) == pytest.approx(0.0, abs=1e-4)
    read_npz(write_stats_npz(tmp_path / "w.npz", {"mu": mu, "sigma": sigma}))
    from bench.metrics import compute_reference

    with pytest.raises(UserError, match="reference statistics: sigma is not positive semi-definite"):
        compute_reference({"mu": np.zeros(d), "sigma": bad["indefinite.npz"]}, extractor=_StatsOnly())


class _StatsOnly(FeatureExtractor):
    """A statistics-only reference never runs the network; this extractor only names the feature space."""

    name, keys = "smoke", ("pool",)


class _QuadrantColours(FeatureExtractor):
    """A real (if crude) 12-d feature space: the mean colour of each image quadrant."""

    name, keys, device = "quadrants", ("pool",), torch.device("cpu")

    def _forward(self, x):
        q = torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 2)  # [B, 3, 2, 2]
        return {"pool": q.flatten(1)}


def test_evaluate_records_the_subset_sizes_it_used():
    from bench.metrics import evaluate

    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (300, 8, 8, 3), dtype=np.uint8)
    smp = torch.rand(260, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1  # float: converted
    out = evaluate(smp, ref, extractor=_QuadrantColours(), metrics="fid_inf,kid", kid_subset_size=100)
    assert (out["fid_inf_n_min"], out["fid_inf_n_max"], out["fid_inf_points"]) == (
        26,
        260,
        15,
    )  # N/10 >= 2 x 12
    assert (out["kid_subset_size"], out["kid_subsets"]) == (100, 100)
    feats = _QuadrantColours().features(_adm_to_uint8(smp))["pool"]  # ADM's truncation by default
    assert (
        out["fid_inf"]
        == fid_infinity(feats, *statistics(_QuadrantColours().features(ref)["pool"]))["fid_inf"]
    )
