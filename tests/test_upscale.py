"""Upscaling: our networks, loaded from every key format, equal to the pixel what the reference
Real-ESRGAN computes with the same weights, whole and tiled.

The reference is written here independently of `curate.upscale`: a functional forward pass over
the release files' own key names (no nn.Module), and `RealESRGANer.enhance` restated step by step
on BGR arrays as `cv2.imread` gives them.
"""

import math
import pickle
import sys
import types

import cv2
import numpy as np
import pytest
import torch
from conftest import by_path, cli, cli_json
from make_sample import character
from PIL import Image
from safetensors.torch import save_file
from torch.nn import functional as F

from lorakit.curate.upscale.inference import load_upscaler
from lorakit.curate.upscale.loading import UnknownArchitecture, read_state_dict
from lorakit.errors import UserError

# --- tiny random models in the release files' layouts ------------------------------------------


def realesrgan_rrdb(num_feat=8, num_block=2, grow=4, unshuffle=1, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def conv(cin, cout):
        return {"weight": torch.randn(cout, cin, 3, 3, generator=g) * 0.1,
                "bias": torch.randn(cout, generator=g) * 0.01}

    sd = {}

    def add(name, cin, cout):
        for k, v in conv(cin, cout).items():
            sd[f"{name}.{k}"] = v

    add("conv_first", 3 * unshuffle * unshuffle, num_feat)
    for b in range(num_block):
        for r in (1, 2, 3):
            for c in range(1, 6):
                add(f"body.{b}.rdb{r}.conv{c}", num_feat + (c - 1) * grow, grow if c < 5 else num_feat)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        add(name, num_feat, num_feat)
    add("conv_last", num_feat, 3)
    return sd


OLD_4X = {"conv_up1": "model.3", "conv_up2": "model.6", "conv_hr": "model.8", "conv_last": "model.10"}
OLD_2X = {"conv_up1": "model.3", "conv_hr": "model.5", "conv_last": "model.7"}


def to_old_esrgan(sd: dict, num_block: int, stages: dict = OLD_4X) -> dict:
    """The same weights under the old ESRGAN names (4x-UltraSharp, Remacri...). The upsampling
    and HR convs sit at indices that depend on the number of upsampling stages."""
    names = {"conv_first": "model.0", "conv_body": f"model.1.sub.{num_block}", **stages}
    out = {}
    for key, value in sd.items():
        module, param = key.rsplit(".", 1)
        if module.startswith("body."):
            _, b, rdb, conv = module.split(".")
            out[f"model.1.sub.{b}.RDB{rdb[-1]}.conv{conv[-1]}.0.{param}"] = value
        else:
            out[f"{names[module]}.{param}"] = value
    return out


def srvgg(num_feat=8, num_conv=3, upscale=4, seed=1) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd, index, cin = {}, 0, 3
    for _ in range(num_conv + 1):
        sd[f"body.{index}.weight"] = torch.randn(num_feat, cin, 3, 3, generator=g) * 0.1
        sd[f"body.{index}.bias"] = torch.randn(num_feat, generator=g) * 0.01
        sd[f"body.{index + 1}.weight"] = torch.rand(num_feat, generator=g) * 0.3  # PReLU
        index, cin = index + 2, num_feat
    sd[f"body.{index}.weight"] = torch.randn(3 * upscale * upscale, num_feat, 3, 3, generator=g) * 0.1
    sd[f"body.{index}.bias"] = torch.randn(3 * upscale * upscale, generator=g) * 0.01
    return sd


# --- the reference ----------------------------------------------------------------------------


def _conv(sd, name, x):
    return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1)


def _unshuffle(x, s):  # basicsr's pixel_unshuffle, by view and permute
    b, c, hh, hw = x.shape
    return x.view(b, c, hh // s, s, hw // s, s).permute(0, 1, 3, 5, 2, 4).reshape(b, c * s * s, hh // s, hw // s)


def reference_rrdb(sd, x, num_block, unshuffle, ups=("conv_up1", "conv_up2")):
    lrelu = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
    feat = _conv(sd, "conv_first", _unshuffle(x, unshuffle) if unshuffle > 1 else x)
    body = feat
    for b in range(num_block):
        block_in = body
        for r in (1, 2, 3):
            xs = [body]
            for c in range(1, 5):
                xs.append(lrelu(_conv(sd, f"body.{b}.rdb{r}.conv{c}", torch.cat(xs, 1))))
            body = _conv(sd, f"body.{b}.rdb{r}.conv5", torch.cat(xs, 1)) * 0.2 + xs[0]
        body = body * 0.2 + block_in
    feat = feat + _conv(sd, "conv_body", body)
    for up in ups:
        feat = lrelu(_conv(sd, up, F.interpolate(feat, scale_factor=2, mode="nearest")))
    return _conv(sd, "conv_last", lrelu(_conv(sd, "conv_hr", feat)))


def reference_srvgg(sd, x, num_conv, upscale):
    out = x
    for i in range(num_conv + 1):
        out = _conv(sd, f"body.{2 * i}", out)
        out = F.prelu(out, sd[f"body.{2 * i + 1}.weight"])
    out = _conv(sd, f"body.{2 * num_conv + 2}", out)
    return F.pixel_shuffle(out, upscale) + F.interpolate(x, scale_factor=upscale, mode="nearest")


def reference_enhance(model, scale, bgr, tile=0, tile_pad=10, pre_pad=0, outscale=None):
    """RealESRGANer.enhance on a uint8 BGR/BGRA image, step by step."""
    h_input, w_input = bgr.shape[:2]
    img = bgr.astype(np.float32) / 255.0
    mod_scale = {2: 2, 1: 4}.get(scale)

    def run_net(rgb):
        t = torch.from_numpy(np.transpose(rgb, (2, 0, 1))).float().unsqueeze(0)
        if pre_pad:
            t = F.pad(t, (0, pre_pad, 0, pre_pad), "reflect")
        mph = mpw = 0
        if mod_scale:
            _, _, h, w = t.shape
            mph, mpw = (mod_scale - h % mod_scale) % mod_scale, (mod_scale - w % mod_scale) % mod_scale
            t = F.pad(t, (0, mpw, 0, mph), "reflect")
        with torch.no_grad():
            if tile:
                _, c, height, width = t.shape
                out = t.new_zeros((1, c, height * scale, width * scale))
                for y in range(math.ceil(height / tile)):
                    for x in range(math.ceil(width / tile)):
                        sx, sy = x * tile, y * tile
                        ex, ey = min(sx + tile, width), min(sy + tile, height)
                        spx, spy = max(sx - tile_pad, 0), max(sy - tile_pad, 0)
                        epx, epy = min(ex + tile_pad, width), min(ey + tile_pad, height)
                        piece = model(t[:, :, spy:epy, spx:epx])
                        otx, oty = (sx - spx) * scale, (sy - spy) * scale
                        out[:, :, sy * scale:ey * scale, sx * scale:ex * scale] = \
                            piece[:, :, oty:oty + (ey - sy) * scale, otx:otx + (ex - sx) * scale]
            else:
                out = model(t)
        _, _, h, w = out.shape
        out = out[:, :, 0:h - mph * scale, 0:w - mpw * scale]
        _, _, h, w = out.shape
        out = out[:, :, 0:h - pre_pad * scale, 0:w - pre_pad * scale]
        out = out.squeeze().float().clamp_(0, 1).numpy()
        return np.transpose(out[[2, 1, 0], :, :], (1, 2, 0))  # back to BGR

    if bgr.shape[2] == 4:
        alpha = img[:, :, 3]
        out = run_net(cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2RGB))
        out_alpha = cv2.cvtColor(run_net(cv2.cvtColor(alpha, cv2.COLOR_GRAY2RGB)), cv2.COLOR_BGR2GRAY)
        out = cv2.cvtColor(out, cv2.COLOR_BGR2BGRA)
        out[:, :, 3] = out_alpha
    else:
        out = run_net(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    out = (out * 255.0).round().astype(np.uint8)
    if outscale is not None and outscale != float(scale):
        out = cv2.resize(out, (int(w_input * outscale), int(h_input * outscale)),
                         interpolation=cv2.INTER_LANCZOS4)
    return out


def ours(path, img, tile=0, tile_pad=10, pre_pad=0, target=None):
    up = load_upscaler(str(path), "cpu", "fp32", tile, tile_pad, pre_pad)
    out = np.asarray(up.upscale(img, target))
    return cv2.cvtColor(out, cv2.COLOR_RGBA2BGRA if img.mode == "RGBA" else cv2.COLOR_RGB2BGR)


def bgr_of(img):
    arr = np.asarray(img)
    return cv2.cvtColor(arr, cv2.COLOR_RGBA2BGRA if img.mode == "RGBA" else cv2.COLOR_RGB2BGR)


# --- the equality tests -----------------------------------------------------------------------

RRDB = realesrgan_rrdb()
IMAGE = character((37, 29), hue=1)  # odd sizes: padding and tile edges are exercised


def _files(tmp_path, sd, old_blocks=None):
    files = {
        "params_ema.pth": {"params_ema": sd},
        "params.pth": {"params": sd},
        "bare.pth": sd,
    }
    out = {}
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
        out[name] = tmp_path / name
    save_file(sd, str(tmp_path / "release.safetensors"))
    out["release.safetensors"] = tmp_path / "release.safetensors"
    if old_blocks is not None:
        old = to_old_esrgan(sd, old_blocks)
        torch.save(old, tmp_path / "old_esrgan.pth")
        save_file(old, str(tmp_path / "old_esrgan.safetensors"))
        out["old_esrgan.pth"] = tmp_path / "old_esrgan.pth"
        out["old_esrgan.safetensors"] = tmp_path / "old_esrgan.safetensors"
    return out


@pytest.mark.parametrize("tile", [0, 16])
def test_rrdbnet_x4_equals_reference_in_every_key_format(tmp_path, tile):
    expected = reference_enhance(lambda t: reference_rrdb(RRDB, t, 2, 1), 4, bgr_of(IMAGE), tile=tile)
    files = _files(tmp_path, RRDB, old_blocks=2)
    assert len(files) == 6
    for name, path in files.items():
        got = ours(path, IMAGE, tile=tile)
        assert got.shape == (29 * 4, 37 * 4, 3)
        assert np.array_equal(got, expected), name


def test_tiling_differs_from_whole_only_near_tile_seams():
    """Tiles are what bound memory: they change the result slightly, as in the reference."""
    whole = reference_enhance(lambda t: reference_rrdb(RRDB, t, 2, 1), 4, bgr_of(IMAGE))
    tiled = reference_enhance(lambda t: reference_rrdb(RRDB, t, 2, 1), 4, bgr_of(IMAGE), tile=16, tile_pad=2)
    assert not np.array_equal(whole, tiled)
    assert np.abs(whole.astype(int) - tiled.astype(int)).mean() < 5


def test_x2_pixel_unshuffle_model_with_odd_sizes_and_prepad(tmp_path):
    sd = realesrgan_rrdb(unshuffle=2, seed=3)
    torch.save({"params_ema": sd}, tmp_path / "x2.pth")
    for tile, pre_pad in ((0, 0), (16, 0), (16, 4)):
        expected = reference_enhance(lambda t: reference_rrdb(sd, t, 2, 2), 2, bgr_of(IMAGE),
                                     tile=tile, pre_pad=pre_pad)
        got = ours(tmp_path / "x2.pth", IMAGE, tile=tile, pre_pad=pre_pad)
        assert got.shape == (58, 74, 3)
        assert np.array_equal(got, expected), (tile, pre_pad)


def test_old_esrgan_2x_with_one_upsampling_stage(tmp_path):
    """Old-ESRGAN 2x files upsample once (model.3), then HR convs at model.5 and model.7."""
    sd = realesrgan_rrdb(seed=5)
    del sd["conv_up2.weight"], sd["conv_up2.bias"]
    torch.save(to_old_esrgan(sd, 2, OLD_2X), tmp_path / "2x_old.pth")
    expected = reference_enhance(lambda t: reference_rrdb(sd, t, 2, 1, ups=("conv_up1",)), 2,
                                 bgr_of(IMAGE), tile=16)
    got = ours(tmp_path / "2x_old.pth", IMAGE, tile=16)
    assert got.shape == (58, 74, 3)
    assert np.array_equal(got, expected)


def test_half_precision_path_runs_and_stays_close(tmp_path):
    """The GPU default is fp16; bf16 exercises the same code on the CPU."""
    torch.save({"params_ema": RRDB}, tmp_path / "m.pth")
    full = ours(tmp_path / "m.pth", IMAGE, tile=16)
    up = load_upscaler(str(tmp_path / "m.pth"), "cpu", "bf16", 16)
    assert next(up.net.parameters()).dtype == torch.bfloat16
    half = bgr_of(up.upscale(IMAGE))
    assert half.shape == full.shape
    assert np.abs(half.astype(int) - full.astype(int)).mean() < 3


def test_srvgg_compact_equals_reference(tmp_path):
    sd = srvgg()
    torch.save({"params": sd}, tmp_path / "animevideov3.pth")
    save_file(sd, str(tmp_path / "animevideov3.safetensors"))
    for tile in (0, 16):
        expected = reference_enhance(lambda t: reference_srvgg(sd, t, 3, 4), 4, bgr_of(IMAGE), tile=tile)
        for name in ("animevideov3.pth", "animevideov3.safetensors"):
            assert np.array_equal(ours(tmp_path / name, IMAGE, tile=tile), expected), (name, tile)


def test_alpha_goes_through_the_network_like_the_reference(tmp_path):
    torch.save({"params_ema": RRDB}, tmp_path / "m.pth")
    rgba = character((30, 22), background=None, hue=2)
    assert rgba.mode == "RGBA"
    expected = reference_enhance(lambda t: reference_rrdb(RRDB, t, 2, 1), 4, bgr_of(rgba), tile=16)
    assert np.array_equal(ours(tmp_path / "m.pth", rgba, tile=16), expected)


def test_non_native_scale_ends_with_lanczos_like_the_reference(tmp_path):
    torch.save({"params_ema": RRDB}, tmp_path / "m.pth")
    expected = reference_enhance(lambda t: reference_rrdb(RRDB, t, 2, 1), 4, bgr_of(IMAGE), outscale=2.5)
    got = ours(tmp_path / "m.pth", IMAGE, target=(int(37 * 2.5), int(29 * 2.5)))
    assert got.shape == expected.shape == (72, 92, 3)
    assert np.array_equal(got, expected)


# --- loading safety, names, download, spandrel -----------------------------------------------


class _Exploit:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pickled_code_is_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"params_ema": _Exploit()}, f, protocol=2)
    with pytest.raises(UserError, match="never runs pickled code"):
        read_state_dict(tmp_path / "evil.pth")
    assert not (tmp_path / "PWNED").exists()


def test_unknown_architecture_names_spandrel(tmp_path, monkeypatch):
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(tmp_path / "swinir.safetensors"))
    monkeypatch.setitem(sys.modules, "spandrel", None)  # as if not installed
    with pytest.raises(UnknownArchitecture, match="spandrel"):
        load_upscaler(str(tmp_path / "swinir.safetensors"), "cpu", "fp32")


def test_spandrel_backs_architectures_we_do_not_implement(tmp_path, monkeypatch):
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(tmp_path / "swinir.safetensors"))
    loaded = []

    class Descriptor:
        scale = 2
        size_requirements = types.SimpleNamespace(multiple_of=4)

        def __call__(self, t):
            return F.interpolate(t, scale_factor=2, mode="nearest")

    class ModelLoader:
        def load_from_file(self, path):
            loaded.append(path)
            return Descriptor()

    monkeypatch.setitem(sys.modules, "spandrel", types.SimpleNamespace(ModelLoader=ModelLoader))
    up = load_upscaler(str(tmp_path / "swinir.safetensors"), "cpu", "fp32", tile=0)
    assert loaded == [str(tmp_path / "swinir.safetensors")] and up.size_multiple == 4
    out = up.upscale(IMAGE)
    assert out.size == (74, 58)
    assert np.array_equal(np.asarray(out), np.asarray(IMAGE.resize((74, 58), Image.NEAREST)))


def test_named_model_downloads_into_the_cache(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    torch.save({"params": srvgg()}, mirror / "realesr-animevideov3.pth")
    src = tmp_path / "src"
    src.mkdir()
    character((20, 24)).save(src / "small.png")
    env = {"LORAKIT_CACHE": str(tmp_path / "cache"), "LORAKIT_UPSCALE_MIRROR": mirror.as_uri()}
    cli("curate", "upscale", src, tmp_path / "out", "--model", "realesr-animevideov3", env=env)
    assert (tmp_path / "cache" / "upscalers" / "realesr-animevideov3.pth").is_file()
    assert Image.open(tmp_path / "out" / "small.png").size == (80, 96)


def test_offline_error_says_what_to_fetch_and_where(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    character((20, 24)).save(src / "small.png")
    env = {"LORAKIT_CACHE": str(tmp_path / "cache"),
           "LORAKIT_UPSCALE_MIRROR": (tmp_path / "nowhere").as_uri()}
    proc = cli("curate", "upscale", src, tmp_path / "out", "--model", "RealESRGAN_x4plus", env=env, check=2)
    message = " ".join(proc.stderr.split())
    assert "RealESRGAN_x4plus.pth" in message
    assert str(tmp_path / "cache" / "upscalers" / "RealESRGAN_x4plus.pth") in message.replace(" ", "") \
        or "cache/upscalers/RealESRGAN_x4plus.pth" in message.replace(" ", "")
    proc = cli("curate", "upscale", src, tmp_path / "out", "--model", "no-such-model", env=env, check=2)
    assert "Known models" in proc.stderr


def test_upscale_command_options(tmp_path):
    torch.save({"params_ema": RRDB}, tmp_path / "4x-Tiny.pth")
    src = tmp_path / "src"
    src.mkdir()
    character((24, 30)).save(src / "small.png")
    character((24, 30), background=None).save(src / "clear.png")
    character((200, 220)).save(src / "big.jpg")
    report = cli_json("curate", "upscale", src, tmp_path / "out", "--model", tmp_path / "4x-Tiny.pth",
                      "--only-below", "100", "--tile", "16")
    items = by_path(report)
    assert items["big.jpg"]["status"] == "copied"
    assert (tmp_path / "out" / "big.jpg").read_bytes() == (src / "big.jpg").read_bytes()
    assert Image.open(tmp_path / "out" / "small.png").size == (96, 120)
    assert Image.open(tmp_path / "out" / "clear.png").mode == "RGBA"
    cli("curate", "upscale", src, tmp_path / "s2", "--model", tmp_path / "4x-Tiny.pth", "--scale", "2")
    assert Image.open(tmp_path / "s2" / "small.png").size == (48, 60)
    cli("curate", "upscale", src, tmp_path / "d", "--model", tmp_path / "4x-Tiny.pth",
        "--downscale-first", "0.5", "--scale", "1")
    assert Image.open(tmp_path / "d" / "big.jpg").size == (200, 220)
