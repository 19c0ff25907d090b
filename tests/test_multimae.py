"""The MultiMAE model (models/multimae.py): masking, one encoder pass on visible tokens, losses, export."""

import pytest
import timm
import torch

from models.multimae import MultiMAE, allocate_visible, patchify, unpatchify
from utils.errors import ConfigError, DataError

SMALL = dict(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_dim=32, decoder_heads=2)


def make_model(**kwargs) -> MultiMAE:
    torch.manual_seed(0)
    return MultiMAE(**{**SMALL, "num_visible": 12, **kwargs})


def make_inputs(batch: int = 4, size: int = 32, classes: int = 10) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "rgb": torch.randn(batch, 3, size, size, generator=g),
        "depth": torch.rand(batch, 1, size, size, generator=g) * 8 + 0.5,
        "semseg": torch.randint(0, classes, (batch, size, size), generator=g),
    }


def test_allocate_visible_largest_remainder_by_hand():
    counts = allocate_visible(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]), total=7, capacity=16)
    # 7 * [0.5, 0.3, 0.2] = [3.5, 2.1, 1.4] -> floors [3, 2, 1], the missing one to the largest remainder
    # 7 * [0.1, 0.1, 0.8] = [0.7, 0.7, 5.6] -> floors [0, 0, 5], two missing: remainders 0.7, 0.7
    assert counts.tolist() == [[4, 2, 1], [1, 1, 5]]


def test_allocate_visible_caps_at_capacity_and_keeps_the_total():
    shares = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 0.05, 0.95]])
    counts = allocate_visible(shares, total=10, capacity=6)
    assert counts.sum(1).tolist() == [10, 10, 10]
    assert counts.max() <= 6 and counts.min() >= 0
    assert counts[1].tolist() == [6, 4, 0]  # the excess goes to the next largest share
    torch.manual_seed(0)
    random_shares = torch.distributions.Dirichlet(torch.full((3,), 0.3)).sample((500,))
    counts = allocate_visible(random_shares, total=40, capacity=16)
    assert (counts.sum(1) == 40).all() and counts.max() <= 16


def test_dirichlet_masking_keeps_exactly_the_budget_with_varied_shares():
    model = make_model(num_visible=20)
    torch.manual_seed(0)
    visible = model.sample_visible(256)
    assert visible.shape == (256, 3, 16)
    per_modality = visible.sum(-1)
    assert (per_modality.sum(1) == 20).all()  # exactly the configured total, every sample
    assert per_modality.max() <= 16
    assert per_modality[:, 0].unique().numel() > 8  # Dirichlet(1): shares vary widely across samples
    share = per_modality.float().mean(0) / 20
    assert torch.allclose(share, torch.full((3,), 1 / 3), atol=0.05)  # symmetric on average
    # a large concentration makes the split nearly even: the alpha really is the Dirichlet's
    even = make_model(num_visible=21, dirichlet_alpha=1e4).sample_visible(64).sum(-1)
    assert (even - 7).abs().max() <= 1


def test_encoder_sees_only_the_visible_tokens_plus_the_global_token():
    model = make_model(num_visible=12)
    lengths = []
    model.blocks[0].register_forward_hook(lambda m, inp, out: lengths.append(inp[0].shape[1]))
    out = model(make_inputs())
    assert lengths == [1 + 12]  # one encoder pass, 12 visible tokens of the 3 x 16
    assert out.features.shape == (4, 13, 32)
    assert out.preds["rgb"].shape == (4, 16, 8 * 8 * 3)
    assert out.preds["depth"].shape == (4, 16, 8 * 8)
    assert out.preds["semseg"].shape == (4, 16, 8 * 8 * 10)
    visible_count = sum((~m).sum(1) for m in out.masked.values())
    assert (visible_count == 12).all()


def test_visible_override_selects_the_encoded_tokens():
    model = make_model(num_visible=12)
    inputs = make_inputs(batch=1)
    visible = torch.zeros(1, 3, 16, dtype=torch.bool)
    visible[0, 0, :4] = True
    visible[0, 1, 10:14] = True
    visible[0, 2, [0, 5, 7, 15]] = True
    out = model(inputs, visible=visible)
    expected = [0, 1, 2, 3, 16 + 10, 16 + 11, 16 + 12, 16 + 13, 32, 37, 39, 47]
    assert out.ids_keep[0].tolist() == expected
    assert torch.equal(out.masked["depth"][0], ~visible[0, 1])


def fixed_visible(batch: int) -> torch.Tensor:
    visible = torch.zeros(batch, 3, 16, dtype=torch.bool)
    visible[:, :, :4] = True  # patches 0-3 of every modality visible, 4-15 masked
    return visible


@pytest.mark.parametrize("task", ["rgb", "depth", "semseg"])
def test_losses_are_on_masked_patches_only(task):
    model = make_model()
    inputs = make_inputs()
    out = model(inputs, visible=fixed_visible(4))
    base = model.losses(out, inputs)[task]

    def perturbed(row: slice) -> dict:
        changed = {k: v.clone() for k, v in inputs.items()}
        if task == "semseg":
            changed["semseg"][:, row, :] = (changed["semseg"][:, row, :] + 3) % 10
        else:
            region = changed[task][:, :, row, :]
            changed[task][:, :, row, :] = region + torch.rand(
                region.shape, generator=torch.Generator().manual_seed(0)
            )
        return changed

    # rows 0-7 of a 32-pixel image with patch 8 hold patches 0-3, which are visible
    visible_changed = model.losses(out, perturbed(slice(0, 8)))[task]
    masked_changed = model.losses(out, perturbed(slice(8, 16)))[task]
    assert torch.equal(visible_changed[0], base[0])
    assert not torch.allclose(masked_changed[0], base[0])
    per_patch = {"rgb": 8 * 8 * 3, "depth": 8 * 8, "semseg": 8 * 8}[task]
    assert float(base[1]) == 4 * 12 * per_patch  # count: masked patches x values per patch


def test_loss_values_match_a_direct_computation():
    model = make_model()
    inputs = make_inputs()
    out = model(inputs, visible=fixed_visible(4))
    losses = model.losses(out, inputs)
    masked = slice(4, 16)
    target = patchify((inputs["depth"] - 4.0) / 2.0, 8)[:, masked]
    expected = (out.preds["depth"][:, masked] - target).abs().mean()
    torch.testing.assert_close(losses["depth"][0] / losses["depth"][1], expected)
    logits = out.preds["semseg"][:, masked].reshape(-1, 10)
    labels = patchify(inputs["semseg"][:, None], 8)[:, masked].reshape(-1)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    torch.testing.assert_close(losses["semseg"][0] / losses["semseg"][1], ce)


def test_rgb_target_is_normalised_per_patch():
    model = make_model()
    rgb = make_inputs()["rgb"]
    target = model.targets({"rgb": rgb})["rgb"]
    torch.testing.assert_close(target.mean(-1), torch.zeros(4, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.var(-1), torch.ones(4, 16), atol=1e-3, rtol=0)
    # invariant to a per-image affine change of brightness: only a per-patch normalisation is
    scaled = model.targets({"rgb": rgb * 3 + 2})["rgb"]
    torch.testing.assert_close(scaled, target, atol=1e-4, rtol=0)
    raw = MultiMAE(**{**SMALL, "num_visible": 12, "norm_pix_loss": False}).targets({"rgb": rgb})["rgb"]
    torch.testing.assert_close(raw, patchify(rgb, 8))


def test_patchify_roundtrip_and_layout():
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    p = patchify(x, 8)
    assert p.shape == (2, 4, 192)
    assert torch.equal(unpatchify(p, 8, (2, 2), 3), x)
    assert torch.equal(p[0, 1].reshape(8, 8, 3)[..., 0], x[0, 0, :8, 8:])  # patch 1 = top-right


def test_every_task_reaches_the_shared_layer():
    model = make_model()
    inputs = make_inputs()
    out = model(inputs)
    losses = model.losses(out, inputs)
    shared = model.shared_params()
    assert shared[0] is model.blocks[-1].mlp.fc2.weight
    for task, (total, count) in losses.items():
        grads = torch.autograd.grad(total / count, shared, retain_graph=True)
        assert grads[0].abs().sum() > 0, task


def test_exported_encoder_loads_strictly_into_timm_and_matches():
    model = make_model()
    with torch.no_grad():  # move every parameter away from its initial value
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    vit = timm.create_model(model.timm_name, pretrained=False, **model.timm_kwargs())
    result = vit.load_state_dict(model.timm_encoder_state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    rgb = make_inputs()["rgb"]
    model.eval()
    vit.eval()
    with torch.no_grad():
        ours = model.forward_features(rgb)
        theirs = vit.forward_features(rgb)
        pooled = vit(rgb)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, ours[:, 0], atol=1e-5, rtol=1e-5)  # global_pool="token"


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"image_size": 36}, r"model\.image_size=36 is not divisible by model\.patch_size=8"),
        ({"modalities": ["rgb", "normals"]}, r"model\.modalities"),
        ({"num_visible": 49}, r"model\.num_visible=49"),
        ({"embed_dim": 30}, r"model\.embed_dim=30"),
        ({"dirichlet_alpha": 0}, r"model\.dirichlet_alpha"),
    ],
)
def test_bad_configuration_names_the_key(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        make_model(**kwargs)
    assert "\n" not in str(err.value)


def test_class_id_outside_num_classes_names_the_key():
    model = make_model()
    inputs = make_inputs()
    inputs["semseg"][0, 0, 0] = 12
    with pytest.raises(DataError, match=r"class id 12, outside model\.num_classes=10"):
        model(inputs)


def test_missing_modality_in_the_batch_names_the_key():
    model = make_model()
    inputs = make_inputs()
    del inputs["depth"]
    with pytest.raises(DataError, match=r"model\.modalities names 'depth'"):
        model(inputs)
