"""NoW-protocol scoring: crop, alignment, refinement and the whole-folder evaluation."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from testing.geometry import MeshDistance, apply_similarity
from testing.now_eval import (
    AlignmentResiduals,
    crop_scan,
    evaluate,
    landmark_alignment,
    load_pred_landmarks,
    now_items,
    read_official_outputs,
    score_mesh,
    stirling_items,
)
from testing.pp import read_pp, write_pp
from testing.report import PUBLISHED_NOW, cumulative_error_curve, markdown_table, write_reports
from tests.synthetic_now import (
    ellipsoid_head,
    kept_mask,
    make_scan,
    random_similarity,
    write_image_list,
    write_now_folder,
    write_prediction,
)
from utils.errors import MICAError


def test_pp_roundtrip_and_errors(tmp_path):
    pts = np.random.default_rng(0).normal(size=(7, 3)) * 50
    write_pp(tmp_path / "a.pp", pts)
    np.testing.assert_array_equal(read_pp(tmp_path / "a.pp"), pts)
    # The official reader takes lines 9..15: our file keeps that layout.
    lines = (tmp_path / "a.pp").read_text().splitlines()
    assert all(ln.strip().startswith("<point") for ln in lines[8:15])
    (tmp_path / "bad.pp").write_text("<PickedPoints><point x='1'")
    with pytest.raises(MICAError, match="bad.pp"):
        read_pp(tmp_path / "bad.pp")
    write_pp(tmp_path / "six.pp", pts[:6])
    with pytest.raises(MICAError, match="6 points"):
        read_pp(tmp_path / "six.pp")
    with pytest.raises(FileNotFoundError, match="missing.pp"):
        read_pp(tmp_path / "missing.pp")


def test_crop_scan_hand_values():
    # Landmarks: outer eyes 80 apart, bridge 40 above the nose bottom -> centre (0, 12, 0), radius 84.
    lm = np.array([[-40, 40, 0], [-10, 40, 0], [10, 40, 0], [40, 40, 0], [0, 0, 0], [-20, -30, 0], [20, -30, 0]], float)
    pts = np.array([[0, 12, 83.9], [0, 12, 84.1], [0, 12 - 84.1, 0], [0, 12 - 83.0, 0]])
    faces = np.array([[0, 1, 2], [0, 3, 0]])
    kept, kept_faces, mask = crop_scan(pts, faces, lm)
    np.testing.assert_array_equal(mask, [True, False, False, True])
    np.testing.assert_array_equal(kept, pts[[0, 3]])
    np.testing.assert_array_equal(kept_faces, [[0, 1, 0]])


def test_landmark_alignment_metrical_keeps_unit_scale():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(7, 3)) * 0.05  # metres
    s, rot, t = random_similarity(rng, scale=1000.0)
    dst = s * src @ rot.T + t
    s2, r2, t2 = landmark_alignment(src, dst * 1.1, metrical=True, unit_factor=1000.0)
    assert s2 == 1000.0
    np.testing.assert_allclose(r2, rot, atol=1e-9)
    s3, _, _ = landmark_alignment(src, dst * 1.1, metrical=False)
    assert s3 == pytest.approx(1100.0)


def test_metrical_alignment_keeps_the_procrustes_translation():
    # Hand-made case: scan = 2 * R pred + d exactly, R = 90 degrees about z, d = (10, 20, 30), and the
    # predicted landmarks have mean (1, 2, 3). Procrustes: b = 2, R, c = d. The metrical scorer keeps
    # c (computed with b = 2) and only replaces the scale by the unit factor 1:
    # pred' = R pred + d. (Recomputing c for scale 1 would give c = R (1,2,3) + d = (8, 21, 33).)
    base = np.array([[1, 0, 0], [-1, 0, 0], [0, 2, 0], [0, -2, 0], [0, 0, 3], [0, 0, -3], [0, 0, 0]], float)
    pred = base + [1.0, 2.0, 3.0]
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    scan = 2.0 * pred @ rot.T + [10.0, 20.0, 30.0]
    s, r, t = landmark_alignment(pred, scan, metrical=True, unit_factor=1.0)
    assert s == 1.0
    np.testing.assert_allclose(r, rot, atol=1e-12)
    np.testing.assert_allclose(t, [10.0, 20.0, 30.0], atol=1e-12)
    # pred[0] = (2, 2, 3) -> R (2, 2, 3) + d = (-2, 2, 3) + (10, 20, 30).
    np.testing.assert_allclose(apply_similarity(pred, s, r, t)[0], [8.0, 22.0, 33.0], atol=1e-12)
    # Units: a prediction in metres (scan = 2000 * R pred_m + d) keeps the same c with factor 1000.
    s_m, _, t_m = landmark_alignment(pred / 1000.0, scan, metrical=True, unit_factor=1000.0)
    assert s_m == 1000.0
    np.testing.assert_allclose(t_m, [10.0, 20.0, 30.0], atol=1e-9)
    # Non-metrical: the full similarity.
    s2, _, t2 = landmark_alignment(pred, scan)
    assert s2 == pytest.approx(2.0) and np.allclose(t2, [10.0, 20.0, 30.0])


@pytest.mark.parametrize("with_scale", [True, False])
def test_refinement_jacobian_is_exact(with_scale):
    """The analytic Jacobian against central differences of the residuals (both exact up to h^2)."""
    rng = np.random.default_rng(8)
    v, f, lm = ellipsoid_head(4)
    scan = make_scan(v, f, lm, noise_mm=0.5, rng=rng, scale=1.0)
    points = scan.vertices[kept_mask(scan.vertices, scan.landmarks)]
    mesh_v = apply_similarity(v, scan.scale, scan.rot, scan.t)
    problem = AlignmentResiduals(points[::7], MeshDistance(mesh_v, f), with_scale)
    x = np.array([1.03, 0.02, -0.05, 0.03, 1.5, -0.7, 0.4]) if with_scale else np.array([0.3, -0.2, 0.1, 1.5, -0.7, 0.4])
    jac = problem.jacobian(x)
    h = 1e-6
    fd = np.stack([(problem.residuals(x + h * e) - problem.residuals(x - h * e)) / (2 * h)
                   for e in np.eye(len(x))], axis=1)
    assert jac.shape == fd.shape == (len(points[::7]) + with_scale, len(x))
    err = np.abs(jac - fd).max(axis=1)
    # Rows whose closest point changes triangle within +-h are kinks of the distance; they are rare.
    assert np.median(err) < 1e-7 and (err < 1e-5).mean() > 0.99


@pytest.mark.parametrize("seed", [0, 1])
def test_similarity_copy_of_the_mesh_scores_zero(seed):
    rng = np.random.default_rng(seed)
    v, f, lm = ellipsoid_head(3)
    scan = make_scan(v, f, lm, noise_mm=0.0, rng=rng, scale=1.2, landmark_noise_mm=3.0)  # landmarks off by ~3 mm
    res = score_mesh(scan.vertices, scan.landmarks, v, f, lm, metrical=False)
    assert res.distances.max() < 1e-6
    assert res.scale == pytest.approx(scan.scale, rel=1e-6)
    np.testing.assert_allclose(res.rot, scan.rot, atol=1e-6)
    # Metrical: a scaled copy cannot be matched without scale, a rigid copy can.
    assert score_mesh(scan.vertices, scan.landmarks, v, f, lm, metrical=True).distances.mean() > 1.0
    rigid = make_scan(v, f, lm, noise_mm=0.0, rng=rng, scale=1.0, landmark_noise_mm=3.0)
    res_m = score_mesh(rigid.vertices, rigid.landmarks, v, f, lm, metrical=True)
    assert res_m.distances.max() < 1e-6 and res_m.scale == 1.0
    # Units: a prediction in metres with unit factor 1000.
    res_m = score_mesh(rigid.vertices, rigid.landmarks, v / 1000, f, lm / 1000, metrical=True, unit_factor=1000.0)
    assert res_m.distances.max() < 1e-6


def test_error_equals_added_noise():
    rng = np.random.default_rng(2)
    v, f, lm = ellipsoid_head(4)
    sigma = 0.4
    scan = make_scan(v, f, lm, noise_mm=sigma, rng=rng, landmark_noise_mm=2.0)
    res = score_mesh(scan.vertices, scan.landmarks, v, f, lm)
    truth = np.abs(scan.offsets[kept_mask(scan.vertices, scan.landmarks)]) * scan.scale
    assert len(res.distances) == len(truth) > 1000
    # The refinement fits the noise a little (the true pose is one feasible point, so the refined
    # sum of squares can only be lower); per point it stays within a small fraction of sigma.
    np.testing.assert_allclose(res.distances, truth, atol=0.15 * sigma)
    assert (res.distances ** 2).sum() <= (truth ** 2).sum() * (1 + 1e-3)
    assert np.median(res.distances) == pytest.approx(np.median(truth), rel=0.02)
    assert np.mean(res.distances) == pytest.approx(np.mean(truth), rel=0.02)


def _build(tmp_path, rng, subjects=("S1", "S2"), sigma=0.3, scale=None):
    v, f, lm = ellipsoid_head(3)
    scans, truths = {}, {}
    for s in subjects:
        scan = make_scan(v, f, lm, noise_mm=sigma, rng=rng, scale=scale, landmark_noise_mm=1.0)
        scans[s] = scan
        truths[s] = np.abs(scan.offsets[kept_mask(scan.vertices, scan.landmarks)]) * scan.scale
    root = write_now_folder(tmp_path / "now", scans)
    lines = []
    for s in subjects:
        for ch in ("multiview_neutral", "selfie"):
            lines.append(f"{s}/{ch}/IMG_{ch[:3]}.jpg")
    (root / "imagepathsvalidation.txt").write_text("\n".join(lines) + "\n")
    pred = tmp_path / "pred"
    for i, line in enumerate(lines[:-1]):  # the last prediction is missing
        write_prediction(pred, line, v * 1.0, f, lm, suffix=".obj" if i % 2 else ".ply")
    return root, pred, lines, truths


def test_evaluate_folder_official_outputs_and_report(tmp_path):
    rng = np.random.default_rng(3)
    root, pred, lines, truths = _build(tmp_path, rng)
    items = now_items(root, pred, "validation")
    res = evaluate(items, method="synthetic", progress=False)
    assert res.missing == [lines[-1]]
    assert res.input_files == lines[:-1]
    expected = np.concatenate([truths[ln.split("/")[0]] for ln in lines[:-1]])
    got = res.all_distances
    np.testing.assert_allclose(np.sort(got), np.sort(expected), atol=0.3 * 0.3)  # refinement fits the noise a little
    assert res.overall.median == pytest.approx(np.median(expected), rel=0.05)
    assert res.overall.mean == pytest.approx(np.mean(expected), rel=0.03)
    assert res.overall.std == pytest.approx(np.std(expected), rel=0.05)
    sel = np.concatenate([truths[ln.split("/")[0]] for ln in lines[:-1] if "selfie" in ln])
    assert res.groups["selfie"].mean == pytest.approx(np.mean(sel), rel=0.03)
    assert res.groups["multiview_neutral"].n_images == 2 and res.groups["selfie"].n_images == 1

    out = tmp_path / "results"
    written = write_reports([res], out, PUBLISHED_NOW)
    off = read_official_outputs(out / "synthetic_computed_distances.npy")
    assert off["num_missing_files"] == 1 and off["input_files"] == lines[:-1]
    np.testing.assert_allclose(np.concatenate(off["computed_distances"]), got)
    med, mean = np.loadtxt(out / "synthetic_computed_distances.npy.meanmedian")
    assert med == pytest.approx(np.median(got)) and mean == pytest.approx(np.mean(got))
    img = Image.open(written["curve"])
    assert img.size == (800, 560) and img.format == "PNG"
    assert (out / "cumulative_errors_selfie.png").is_file()
    table = (out / "results.md").read_text()
    assert "| synthetic | no | 3 | 1 |" in table and "MICA (published) | no | - | - | 0.900 | 1.110 | 0.920" in table


def test_metrical_variant_sees_the_scale(tmp_path):
    rng = np.random.default_rng(4)
    root, pred, lines, truths = _build(tmp_path, rng, subjects=("S1",), scale=1.1)
    items = now_items(root, pred, "validation")
    plain = evaluate(items, method="a", progress=False)
    metrical = evaluate(items, method="b", metrical=True, progress=False)
    assert plain.overall.mean == pytest.approx(np.mean(truths["S1"]), rel=0.03)
    assert metrical.overall.mean > 3 * plain.overall.mean
    table = markdown_table([plain, metrical])
    assert "| b | yes |" in table


def test_cumulative_curve_hand_values():
    x, y = cumulative_error_curve(np.array([0.5, 1.5, 2.5, 3.5]), bins=3)
    np.testing.assert_allclose(x, [1.5, 2.5, 3.5])
    np.testing.assert_allclose(y, [25.0, 50.0, 100.0])


def test_landmark_files_and_missing_folders(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(21.0).reshape(1, 7, 3))
    np.testing.assert_array_equal(load_pred_landmarks(tmp_path / "a.npy"), np.arange(21.0).reshape(7, 3))
    np.savetxt(tmp_path / "b.txt", np.ones((7, 3)))
    assert load_pred_landmarks(tmp_path / "b.txt").shape == (7, 3)
    np.save(tmp_path / "c.npy", np.ones((68, 3)))
    with pytest.raises(MICAError, match="c.npy"):
        load_pred_landmarks(tmp_path / "c.npy")
    with pytest.raises(FileNotFoundError, match="test.now_root"):
        now_items(tmp_path / "nope", tmp_path)
    (tmp_path / "now").mkdir()
    with pytest.raises(FileNotFoundError, match="scans"):
        now_items(tmp_path / "now", tmp_path)
    with pytest.raises(FileNotFoundError, match="predicted folder"):
        now_items(tmp_path / "now", tmp_path / "nopred")


def test_stirling_items_layout(tmp_path):
    rng = np.random.default_rng(5)
    v, f, lm = ellipsoid_head(3)
    scan = make_scan(v, f, lm, noise_mm=0.2, rng=rng, scale=1.0)
    write_now_folder(tmp_path / "st", {"F1001": scan})
    for q in ("HQ", "LQ"):
        write_prediction(tmp_path / "pred" / q, "F1001/F1001_01A", v, f, lm, suffix=".ply")
    items = stirling_items(tmp_path / "pred", tmp_path / "st" / "scans", tmp_path / "st" / "scans_lmks_onlypp")
    assert [i.group for i in items] == ["HQ", "LQ"]
    res = evaluate(items, method="st", metrical=True, progress=False)
    truth = np.abs(scan.offsets[kept_mask(scan.vertices, scan.landmarks)])
    assert res.groups["HQ"].mean == pytest.approx(np.mean(truth), rel=0.03)


def test_fit_on_a_subsample_scores_every_point():
    rng = np.random.default_rng(6)
    v, f, lm = ellipsoid_head(4)
    scan = make_scan(v, f, lm, noise_mm=0.3, rng=rng, landmark_noise_mm=2.0)
    full = score_mesh(scan.vertices, scan.landmarks, v, f, lm, fit_points=0)
    sub = score_mesh(scan.vertices, scan.landmarks, v, f, lm, fit_points=1000)
    truth = np.abs(scan.offsets[kept_mask(scan.vertices, scan.landmarks)]) * scan.scale
    assert len(sub.distances) == len(full.distances) == len(truth)  # errors always on every kept scan vertex
    assert sub.distances.mean() == pytest.approx(truth.mean(), rel=0.03)
    assert full.distances.mean() == pytest.approx(truth.mean(), rel=0.03)
    np.testing.assert_allclose(sub.distances, truth, atol=0.4 * 0.3)


def test_unreadable_files_fail_their_items_and_the_rest_is_scored(tmp_path):
    rng = np.random.default_rng(9)
    root, pred, lines, truths = _build(tmp_path, rng, subjects=("S1", "S2", "S3"))
    # lines: S1 neutral, S1 selfie, S2 neutral, S2 selfie, S3 neutral, S3 selfie (missing).
    bad_mesh = pred / "S1" / "selfie" / "IMG_sel.obj"
    assert bad_mesh.is_file()
    bad_mesh.write_text("this is not a mesh\n")
    (root / "scans_lmks_onlypp" / "S2" / "S2.pp").write_text("<PickedPoints><point x='1'")
    res = evaluate(now_items(root, pred, "validation"), method="m", progress=False)
    assert res.input_files == [lines[0], lines[4]]
    assert set(res.failed) == {lines[1], lines[2], lines[3]}
    assert str(bad_mesh.name) in res.failed[lines[1]] and "S2.pp" in res.failed[lines[2]]
    assert res.missing == [lines[5]]
    expected = np.concatenate([truths["S1"], truths["S3"]])
    assert res.overall.mean == pytest.approx(np.mean(expected), rel=0.03)


def test_nan_prediction_landmarks_fail_their_image_naming_the_file(tmp_path):
    """Issue 21, N3: all-NaN predicted landmarks gave "not scored: SVD did not converge"."""
    rng = np.random.default_rng(3)
    v, f, lm = ellipsoid_head(3)
    root = write_now_folder(tmp_path / "now", {"S1": make_scan(v, f, lm, noise_mm=0.2, rng=rng)})
    lines = ["S1/selfie/IMG_1.jpg", "S1/selfie/IMG_2.jpg"]
    write_image_list(root, lines)
    for ln in lines:
        write_prediction(tmp_path / "pred", ln, v, f, lm)
    bad = tmp_path / "pred" / "S1" / "selfie" / "IMG_2.npy"
    np.save(bad, np.full((7, 3), np.nan))
    result = evaluate(now_items(root, tmp_path / "pred"), progress=False)
    assert result.input_files == [lines[0]]
    assert list(result.failed) == [lines[1]]
    assert str(bad) in result.failed[lines[1]] and "NaN" in result.failed[lines[1]]
