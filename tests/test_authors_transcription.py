"""The product's maps against a plain transcription of the authors' code path, on real COCO
images with the real EfficientNet-Lite0 ImageNet backbone (METHODS.md sections 0 and 2).

The transcriptions below are written out loop by loop from the authors' repositories and share
no code with the package:
- IRN ``step/make_cam.py`` with ``VOC12ClassificationDatasetMSF``: each scale resized from the
  uint8 image with PIL bicubic (``imutils.pil_rescale``, size rounded), normalised after,
  [image, flipped image] through the network, ``relu(conv(features, W))``, flip pair summed,
  bilinear to the stride-4 size, summed over scales, GT classes kept, over max + 1e-5.
- LPCAM ``step/make_lpcam.py`` (and ``step_coco``): per scale, per class, the mean cosine to the
  foreground centres; where the class has context centres, relu(that - the mean cosine to them);
  bilinear to the stride-4 size; mean over scales; over the max.
- LPCAM ``step_coco/make_lpcam.py`` selection: softmax(centres W^T), centres over class_thres,
  else those within 1e-6 of the best.
- AdvCAM ``obtain_CAM_masking.py`` with its ``gradCAM.py``: per scale (0.5 first) and GT class,
  the [image, flip] pair climbed ``adv_iter`` times (scale 0.5: fewer), Grad-CAM of the last stage
  from a hooked backward of the summed positive activation, the map accumulated before each step,
  the step normalised by the pair's max |gradient| and clamped to the pair's min / max.
- InferCam ``split_img.py`` then ``infer_cam.py``: the baseline CAM at the image's own size (each
  input's map bilinear straight to it, no multiple-of-16 crop), per GT class ``int()`` of its centre
  of mass; four patches ``img[0:cy + b, 0:cx + b]``, ``img[0:cy + b, cx - b:w]``, ... around the
  centre (b = 10) or the two centres' rectangle (b = 20), the whole image four times for 3+ classes;
  per patch up to 5 rounds of the 8 PIL-scaled inputs (bilinear to the patch, flips undone, summed,
  over max + 1e-5, running max), from round 2 each input erased where the running max over the
  classes is >= 0.7: the mask nearest-resized from the previous input's (a chain), unflipped on
  the flipped inputs, filled with the input's mean; stop when under 2% is newly erased; the patch
  maps pasted at their corners, max over the four. The patch files' JPEG round trip is left out.

The head is a seeded random linear layer: the formulas, not the weights, are under test.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wsss_ray.api import CAM, LPCAM, AdvCAM, InferCam, Model, ReCAM
from wsss_ray.cams.prototypes import score_centres, select_prototypes
from wsss_ray.config import LPCAMConfig
from wsss_ray.models.classifier import build_classifier
from wsss_ray.models.effnet_lite import IMAGENET_MEAN_STD

COCO_TINY = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_tiny"
SCALES = (1.0, 0.5, 1.5, 2.0)
IMAGES = ("000000005001.jpg", "000000010764.jpg")
NUM_CLASSES = 4
LABELS = ([0, 2], [1, 3])
MEAN, STD = IMAGENET_MEAN_STD


# ------------------------------------------------------------------ transcriptions


def authors_scale(img: np.ndarray, s: float) -> np.ndarray:
    if s == 1:
        return img
    h, w = img.shape[:2]
    target = (int(np.round(h * s)), int(np.round(w * s)))
    if target == (h, w):
        return img
    return np.asarray(Image.fromarray(img).resize(target[::-1], Image.BICUBIC))


def authors_normalise(img: np.ndarray) -> np.ndarray:
    out = np.empty_like(img, np.float32)
    for c in range(3):
        out[..., c] = (img[..., c] / 255. - MEAN[c]) / STD[c]
    return out.transpose(2, 0, 1)


def authors_inputs(img: np.ndarray) -> list[torch.Tensor]:
    """The MSF dataset's list: per scale a (2,3,h,w) [image, flipped image]."""
    out = []
    for s in SCALES:
        x = authors_normalise(authors_scale(img, s))
        out.append(torch.from_numpy(np.stack([x, np.flip(x, -1)]).copy()))
    return out


def strided_size(size, stride=4):
    return ((size[0] + stride - 1) // stride, (size[1] + stride - 1) // stride)


def strided_up_size(size, stride=16):
    return tuple(s * stride for s in strided_size(size, stride))


def to_authors_grid(maps: torch.Tensor, size, high_res: bool) -> torch.Tensor:
    """make_cam's two outputs of one scale's (B,1,h,w) or (1,C,h,w) maps: ``cam`` (stride 4) or
    ``high_res`` (up to the multiple of 16, then the image's size cut from the top left)."""
    if not high_res:
        return F.interpolate(maps, strided_size(size), mode="bilinear", align_corners=False)
    return F.interpolate(maps, strided_up_size(size), mode="bilinear", align_corners=False)[..., :size[0], :size[1]]


def authors_cam(net, img: np.ndarray, label: list[int], w: torch.Tensor | None = None,
                high_res: bool = False) -> torch.Tensor:
    """IRN's make_cam; ReCAM's make_recam is the same with ``w`` = its forward1 / forward2 weight."""
    size = img.shape[:2]
    w = net.head.weight if w is None else w
    outputs = []
    for pair in authors_inputs(img):
        x = F.relu(F.conv2d(net.features(pair), w))
        outputs.append(x[0] + x[1].flip(-1))
    cam = torch.sum(torch.stack([to_authors_grid(o[None], size, high_res)[0] for o in outputs]), 0)
    cam = cam[label]
    return cam / (F.adaptive_max_pool2d(cam, (1, 1)) + 1e-5)


def authors_lpcam(net, img: np.ndarray, label: list[int], centres: dict, context: dict,
                  high_res: bool = False) -> torch.Tensor:
    size = img.shape[:2]
    features = []
    for pair in authors_inputs(img):
        f = net.features(pair)
        features.append(f[0] + f[1].flip(-1))
    maps = []
    for class_id in label:
        per_scale = []
        for feature in features:
            d, h, w = feature.shape
            here = feature.permute(1, 2, 0).reshape(h, w, d)
            att = torch.mean(torch.stack([F.cosine_similarity(here, c.repeat(h, w, 1), 2)
                                          for c in centres[class_id]]), 0)[None, None]
            if len(context[class_id]) > 0:
                ctx = torch.mean(torch.stack([F.cosine_similarity(here, c.repeat(h, w, 1), 2)
                                              for c in context[class_id]]), 0)[None, None]
                att = F.relu(att - ctx)
            per_scale.append(to_authors_grid(att, size, high_res)[:, 0])
        m = torch.mean(torch.cat(per_scale, 0), 0)
        maps.append(m / torch.max(m))
    return torch.stack(maps)


def authors_coco_selection(centres: torch.Tensor, w: torch.Tensor, class_id: int, thres: float) -> torch.Tensor:
    prob = F.softmax(torch.mm(centres, w.T), dim=1)
    selected = prob[:, class_id] > thres
    if torch.sum(selected) < 1:
        selected = prob[:, class_id] > torch.max(prob[:, class_id]) - 1e-6
    return selected


def authors_advcam(net, img: np.ndarray, label: list[int], adv_iter: int, AD_coeff=7.0, AD_stepsize=0.08,
                   score_th=0.5, inputs=None) -> torch.Tensor:
    size = img.shape[:2]
    pack_img = authors_inputs(img) if inputs is None else inputs     # scales (1.0, 0.5, 1.5, 2.0)
    w = net.head.weight
    outputs_cam = []
    mul_for_scale = 1
    for size_idx in [1, 0, 2, 3]:
        for c_idx, c in enumerate(label):
            img_single = pack_img[size_idx].clone()
            if size_idx != 1:
                total_adv_iter = adv_iter
            elif adv_iter > 10:
                total_adv_iter, mul_for_scale = adv_iter // 2, 2
            elif adv_iter < 6:
                total_adv_iter, mul_for_scale = adv_iter, 1
            else:
                total_adv_iter, mul_for_scale = 5, 1.0
            for it in range(total_adv_iter):
                img_single.requires_grad = True
                fmaps = net.features(img_single)                  # the hooked stage4 output
                outputs = F.conv2d(fmaps, w)                      # CAM(separate=True)
                if c_idx == 0 and it == 0:
                    cam_all_classes = torch.zeros([len(label), outputs.shape[2], outputs.shape[3]], dtype=outputs.dtype)
                logits_vec = torch.sum(F.relu(outputs).view(2, outputs.shape[1], -1), -1)      # gsp2d
                grads = torch.autograd.grad(logits_vec[:, c].sum(), fmaps, retain_graph=True)[0]
                weights = torch.sum(grads.view(2, grads.shape[1], -1), -1) / (torch.sum(grads > 0) + 1e-12)
                gcam = F.relu(torch.sum(fmaps * weights[:, :, None, None], dim=1, keepdim=True))
                regions = gcam[0] + gcam[1].flip(-1)
                if it == 0:
                    init_cam = regions.detach()
                cam_all_classes[c_idx] += regions[0].detach() * mul_for_scale
                logit = torch.mean(F.relu(outputs).view(2, outputs.shape[1], -1), -1)          # gap2d
                logit_loss = -2 * (logit[:, c]).sum() + torch.sum(logit)
                expanded_mask = torch.zeros(regions.shape, dtype=regions.dtype)
                expanded_mask[(regions / regions.max()) > score_th] = 1
                L_AD = torch.sum(torch.abs(regions - init_cam) * expanded_mask)
                loss = -logit_loss - L_AD * AD_coeff
                data_grad = torch.autograd.grad(loss, img_single)[0]
                perturbed = img_single + AD_stepsize * data_grad / (torch.max(torch.abs(data_grad)) + 1e-12)
                img_single = torch.clamp(perturbed, img_single.min().item(), img_single.max().item()).detach()
        outputs_cam.append(cam_all_classes)
    strided_cam = torch.sum(torch.stack([F.interpolate(o[None], strided_size(size), mode="bilinear",
                                                       align_corners=False)[0] for o in outputs_cam]), 0)
    return strided_cam / (F.adaptive_max_pool2d(strided_cam, (1, 1)) + 1e-5)


def authors_centre(norm_cam: np.ndarray, shape) -> list[int]:
    """split_img.py: ``list(map(int, ndimage.center_of_mass(norm_cam[i])))`` (int() truncates);
    the except branch (an all-zero map: 0 / 0) gives [int(h / 2), int(w / 2)]."""
    total = norm_cam.astype(np.float64).sum()
    if not total > 0:
        return [int(shape[0] / 2), int(shape[1] / 2)]
    ys, xs = np.indices(norm_cam.shape)
    return [int((ys * norm_cam).sum() / total), int((xs * norm_cam).sum() / total)]


def authors_split(net, img: np.ndarray, label: list[int]) -> list[np.ndarray]:
    """split_img.py: the baseline CAM at the image's own size, a centre per GT class, four patches."""
    h, w = img.shape[:2]
    keep = torch.zeros(NUM_CLASSES)
    keep[label] = 1
    cam_list = []
    for i, x in enumerate(x for pair in authors_inputs(img) for x in pair):
        cam = F.relu(F.conv2d(net.features(x[None]), net.head.weight))
        cam = F.interpolate(cam, (h, w), mode="bilinear", align_corners=False)[0] * keep[:, None, None]
        cam_list.append(cam.flip(-1) if i % 2 == 1 else cam)
    sum_cam = torch.stack(cam_list).sum(0).numpy()
    norm_cam = sum_cam / (np.max(sum_cam, (1, 2), keepdims=True) + 1e-5)
    centres = np.array([authors_centre(norm_cam[c], (h, w)) for c in label])
    if len(label) > 2:
        return [img] * 4                              # "if more than 2 classes, don't split"
    b = 20 if len(label) == 2 else 10
    assert (centres >= b).all(), "a start below 0 would wrap around (numpy slicing): not transcribed"
    cy_max, cx_max = centres[:, 0].max(), centres[:, 1].max()
    cy_min, cx_min = centres[:, 0].min(), centres[:, 1].min()
    return [img[0:cy_max + b, 0:cx_max + b], img[0:cy_max + b, cx_min - b:w],
            img[cy_min - b:h, 0:cx_max + b], img[cy_min - b:h, cx_min - b:w]]


def authors_patch_rounds(net, patch: np.ndarray, label: list[int]) -> torch.Tensor:
    """infer_cam.py, one split: up to 5 inferences of the patch's 8 inputs (4 scales, each with
    its flip), each round's max-normalised sum kept as a running max; from the second round each
    input is erased where the running max over the classes is >= 0.7."""
    ph, pw = patch.shape[:2]
    keep = torch.zeros(NUM_CLASSES)
    keep[label] = 1
    img_list = [x[None] for pair in authors_inputs(patch) for x in pair]
    cam_matrix = torch.zeros(NUM_CLASSES, ph, pw)
    last_left = torch.ones(ph, pw)
    left = None
    for dropout_index in range(5):
        if dropout_index > 0:
            new_img_list = []
            for img in img_list:
                _, _, h, w = img.shape
                left = F.interpolate(left, (h, w))    # nearest, from the previous input's mask
                rgb_mean = torch.mean(img, dim=(2, 3))
                mask_mean = torch.ones_like(img) * rgb_mean[0][None, :, None, None]
                new_img_list.append((left * img + (1 - left) * mask_mean).float())
        else:
            new_img_list = img_list
        cam_list = []
        for i, img in enumerate(new_img_list):
            cam = F.relu(F.conv2d(net.features(img), net.head.weight))
            cam = F.interpolate(cam, (ph, pw), mode="bilinear", align_corners=False)[0] * keep[:, None, None]
            cam_list.append(cam.flip(-1) if i % 2 == 1 else cam)
        sum_cam = torch.stack(cam_list).sum(0)
        norm_cam = sum_cam / (torch.amax(sum_cam, (1, 2), keepdim=True) + 1e-5)
        cam_matrix = torch.maximum(cam_matrix, norm_cam)
        left = (cam_matrix.max(0).values < 0.7).float()
        cam_mask_diff = (last_left.sum() - left.sum()) / (ph * pw)
        last_left = left
        left = left[None, None]
        if cam_mask_diff < 0.02:
            break
    return cam_matrix


def authors_infercam(net, img: np.ndarray, label: list[int]) -> torch.Tensor:
    """split_img.py then infer_cam.py: every patch's map pasted at its corner of a zero (H, W)
    map per GT class, the max over the four; full resolution, no normalisation after."""
    h, w = img.shape[:2]
    patches = authors_split(net, img, label)
    cam_mask = torch.zeros(4, len(label), h, w)
    done = {}
    for k, patch in enumerate(patches):
        key = (id(patch), patch.shape)                # 3+ classes: one image four times, inferred once
        if key not in done:
            done[key] = authors_patch_rounds(net, patch, label)[label]
        ph, pw = patch.shape[:2]
        rows = slice(0, ph) if k in (0, 1) else slice(h - ph, h)
        cols = slice(0, pw) if k in (0, 2) else slice(w - pw, w)
        cam_mask[k, :, rows, cols] = done[key]
    return cam_mask.max(0).values


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def real(coco_tiny_module):
    torch.manual_seed(0)
    net = build_classifier("efficientnet_lite0", "imagenet", NUM_CLASSES).eval()
    with torch.no_grad():
        net.head.weight.normal_(0, 0.05)
    # a 241 x 331 window of each photo (odd sizes: x0.5 and x1.5 hit .5 and round both ways), which
    # keeps the four scales' forwards cheap on CPU
    images = [np.ascontiguousarray(np.asarray(Image.open(coco_tiny_module / "val2017" / n).convert("RGB"))[:241, :331])
              for n in IMAGES]
    return net, images


@pytest.fixture(scope="module")
def coco_tiny_module():
    if not COCO_TINY.exists():
        pytest.skip("../shared/data/coco_tiny is absent")
    return COCO_TINY


def model_of(net, resample="pil") -> Model:
    return Model(net, MEAN, STD, scales=SCALES, flip=True, resample=resample, batch_size=1)


def prototypes_from(net, image: np.ndarray, seed: int = 0):
    """Real feature vectors as centres: class 0 and 2 get context, class 1 and 3 none."""
    with torch.no_grad():
        f = net.features(torch.from_numpy(authors_normalise(image)[None].copy()))[0]
    rows = f.flatten(1).T
    rng = np.random.default_rng(seed)
    picks = lambda n: rows[rng.choice(rows.shape[0], n, replace=False)]  # noqa: E731
    centres = {c: picks(3) for c in range(NUM_CLASSES)}
    context = {c: picks(2) if c in (0, 2) else rows[:0] for c in range(NUM_CLASSES)}
    table = [{"class_id": c, "kind": kind, "vector": v.numpy()}
             for c in range(NUM_CLASSES) for kind, vs in (("fg", centres[c]), ("context", context[c])) for v in vs]
    return centres, context, table


# ------------------------------------------------------------------ tests


def test_cam_matches_authors_make_cam(real):
    net, images = real
    got = CAM(model_of(net), stride=4)(images, LABELS)
    with torch.no_grad():
        for img, lab, g in zip(images, LABELS, got):
            want = authors_cam(net, img, lab).numpy()
            assert g.shape == want.shape
            np.testing.assert_allclose(g, want, atol=2e-5)


def test_full_resolution_cam_is_authors_high_res(real):
    # 241 x 331: the high-res grid is 256 x 336 cut to the image, not a resize to 241 x 331
    net, images = real
    got = CAM(model_of(net), stride=1)(images[:1], LABELS[:1])[0]
    with torch.no_grad():
        want = authors_cam(net, images[0], LABELS[0], high_res=True).numpy()
    assert got.shape == want.shape and got.shape[1:] == images[0].shape[:2]
    np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("variant", ["w*w'", "w'"])
def test_recam_matches_authors_make_recam(real, variant):
    # make_recam: forward2 convolves with w' * w (the predictor's weight times the classifier's),
    # forward1 with w' alone; then make_cam's sum over scales and max-normalisation
    net, images = real
    torch.manual_seed(1)
    with torch.no_grad():
        net.fc2.weight.normal_(0, 0.05)
    got = ReCAM(model_of(net), variant=variant, stride=4)(images[:1], LABELS[:1])[0]
    w2 = net.fc2.weight
    weight = w2 * net.head.weight if variant == "w*w'" else w2
    with torch.no_grad():
        want = authors_cam(net, images[0], LABELS[0], weight).numpy()
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_torch_resample_is_a_measurable_departure(real):
    net, images = real
    got = CAM(model_of(net, "torch"), stride=4)(images[:1], LABELS[:1])[0]
    with torch.no_grad():
        want = authors_cam(net, images[0], LABELS[0]).numpy()
    assert np.abs(got - want).max() > 0.01


def test_lpcam_matches_authors_make_lpcam(real):
    net, images = real
    centres, context, table = prototypes_from(net, images[0])
    assert {r["kind"] for r in table} == {"fg", "context"}
    got = LPCAM(model_of(net), table, stride=4)(images, LABELS)
    with torch.no_grad():
        for img, lab, g in zip(images, LABELS, got):
            want = authors_lpcam(net, img, lab, centres, context).numpy()
            np.testing.assert_allclose(g, want, atol=2e-5)


def test_full_resolution_lpcam_is_authors_high_res(real):
    net, images = real
    centres, context, table = prototypes_from(net, images[0])
    got = LPCAM(model_of(net), table, stride=1)(images[:1], LABELS[:1])[0]
    with torch.no_grad():
        want = authors_lpcam(net, images[0], LABELS[0], centres, context, high_res=True).numpy()
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_coco_prototype_selection_matches_authors(real):
    net, images = real
    _, _, table = prototypes_from(net, images[1], seed=1)
    w = net.head.weight.detach().flatten(1)
    rows = score_centres([dict(r, cluster=i, size=1) for i, r in enumerate(table)], w.numpy())
    for thres in (0.9, 0.3):
        cfg = LPCAMConfig(mu_f=thres, mu_b_low=0.0, mu_b_high=1.0)
        chosen, info = select_prototypes(rows, NUM_CLASSES, cfg)
        for c in range(NUM_CLASSES):
            fg = torch.stack([torch.as_tensor(r["vector"]) for r in table if r["class_id"] == c and r["kind"] == "fg"])
            want = fg[authors_coco_selection(fg, w, c, thres)]
            mine = torch.stack([torch.as_tensor(r["vector"]) for r in chosen
                                if r["class_id"] == c and r["kind"] == "fg"])
            torch.testing.assert_close(mine, want)
        if thres == 0.9:      # a random head: no centre is that sure of its class, every class falls back
            assert info["fallback_classes"] == list(range(NUM_CLASSES))


def test_advcam_one_step_through_the_api_matches_authors(real):
    # float32, the product's own PIL pyramid: x_0's Grad-CAM pair map, summed over scales
    net, images = real
    img = np.ascontiguousarray(images[1][:97, :133])
    got = AdvCAM(model_of(net), steps=1, stride=4)([img], [LABELS[1]])[0]
    want = authors_advcam(net, img, LABELS[1], 1).detach().numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_advcam_climbing_matches_authors(real):
    """Several climbing steps, in float64 on the transcription's own inputs.

    The climb amplifies input rounding about 20x a step (the sign of |G_t - G_0|, the mask edge,
    the pixel holding max|grad|): in float32 the product's and the transcription's inputs differ by
    float rounding and the maps by 2e-6 / 7e-5 / 2e-3 after 1 / 2 / 3 steps. Sharing the inputs in
    float64 isolates the climbing from that noise; 11 steps also run the authors' shorter schedule
    at scale 0.5 (5 steps there)."""
    from wsss_ray.cams.advcam import advcam_maps
    from wsss_ray.cams.cam import ScalePyramid
    from wsss_ray.config import AdvCamConfig
    adv_iter, labels = 11, [3]           # several classes per image: tests/test_advcam.py (batching)
    net, images = real
    net64 = copy.deepcopy(net).double()
    img = np.ascontiguousarray(images[0][:65, :97])
    pairs = [p.double() for p in authors_inputs(img)]
    pyramid = ScalePyramid({s: pair[:1] for s, pair in zip(SCALES, pairs)})
    with torch.no_grad():
        got = advcam_maps(net64.features, net64.head.weight.flatten(1), pyramid, [labels], strided_size(img.shape),
                          SCALES, True, AdvCamConfig(steps=adv_iter))[0]
    want = authors_advcam(net64, img, labels, adv_iter, inputs=pairs).detach()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


# InferCamConfig's defaults are the authors' code (erase="union", three_plus="none",
# erase_views="scaled", bucket_px=1: every patch inferred at its own size): no options needed
INFERCAM_CASES = [(0, [2]), (1, [1, 3]), (0, [0, 1, 3])]


@pytest.mark.parametrize("index, label", INFERCAM_CASES, ids=["1 class", "2 classes", "3 classes"])
def test_infercam_matches_authors_infer_cam(real, index, label):
    """The pure-torch API's InferCam at full resolution (stride 1) against split_img.py + infer_cam.py.

    The authors' ``cam_dict`` is at the image's own size (each input's CAM resized straight to its
    patch, the patches pasted into an (H, W) map), so full resolution is the grid to compare at;
    the product's per-map normalisation after uniting (for its stored grids) moves a map by ~1e-5.
    Every scale (1, 0.5, 1.5, 2) with flips; one class (four patches around its centre, b = 10),
    two (around both centres, b = 20) and three (no split: the whole image). A 161 x 221 window of
    the photos keeps the up-to-5 rounds of 4 patches cheap on CPU.
    """
    net, images = real
    img = np.ascontiguousarray(images[index][:161, :221])
    got = InferCam(model_of(net), stride=1)([img], [label])[0]
    with torch.no_grad():
        want = authors_infercam(net, img, label).numpy()
    assert got.shape == want.shape == (len(label), *img.shape[:2])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_infercam_patch_erasing_is_a_measurable_departure(real):
    # erase_views="patch" (an option) erases the scale-1 patch and then scales and flips it; the
    # authors (the default, "scaled") erase each scaled input with a chained nearest mask,
    # unflipped on flipped inputs
    net, images = real
    img = np.ascontiguousarray(images[0][:161, :221])
    got = InferCam(model_of(net), stride=1, erase_views="patch")([img], [[2]])[0]
    with torch.no_grad():
        want = authors_infercam(net, img, [2]).numpy()
    assert np.abs(got - want).max() > 0.01
