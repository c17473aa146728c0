"""encode-images: resumable, split across hosts, every record exactly once."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llmcxr_jax import checkpoint, cli, encode, sharding
from llmcxr_jax.data import codes as codes_store
from llmcxr_jax.data.image_sources import CachedSource, FolderSource, SyntheticSource
from llmcxr_jax.models.vqgan import VQGAN, get_preset


@pytest.fixture(scope="module")
def model():
    return VQGAN(get_preset("tiny"), rngs=nnx.Rngs(0))


def _all(out):
    return list(codes_store.iter_codes(out))


def test_interrupted_and_restarted_equals_one_run(model, tmp_path):
    src = SyntheticSource(50, 32)
    encode.encode_dataset(model, src, tmp_path / "a", batch_size=3, shard_size=8, progress=False)
    ref = _all(tmp_path / "a")
    assert [i for i, _ in ref] == [src[i]["id"] for i in range(50)]
    direct = np.asarray(model.encode(jnp.asarray(np.stack([src[i]["image"] for i in range(5)]))))
    for (_, codes), want in zip(ref[:5], direct, strict=True):
        np.testing.assert_array_equal(codes, want)
        assert codes.shape == (256,) and codes.max() < 64

    out = tmp_path / "b"
    first = encode.encode_dataset(
        model, src, out, batch_size=3, shard_size=8, max_shards=3, progress=False
    )
    assert first.shards_written == 3
    # a kill in the middle of shard 3 leaves a partial temporary file behind
    (out / (codes_store.shard_name(3, 7) + ".tmp")).write_bytes(b"partial")
    with pytest.raises(FileNotFoundError, match="shard missing"):
        _all(out)
    second = encode.encode_dataset(model, src, out, batch_size=3, shard_size=8, progress=False)
    assert (second.shards_skipped, second.shards_written) == (3, 4)
    got = _all(out)
    assert [i for i, _ in got] == [i for i, _ in ref]  # none missing, none doubled, same order
    for (_, a), (_, b) in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a, b)


def test_data_parallel_encoding_equals_one_device(model, tmp_path):
    src = SyntheticSource(21, 32)  # the last batch is partly padding
    encode.encode_dataset(model, src, tmp_path / "one", batch_size=4, progress=False)
    mesh = sharding.make_mesh((4, 1, 1))
    graphdef, state = nnx.split(model)  # a loaded model's weights are committed to one device
    committed = nnx.merge(graphdef, jax.device_put(state, jax.devices()[0]))
    encode.encode_dataset(
        committed, src, tmp_path / "four", batch_size=4, progress=False, mesh=mesh
    )
    one, four = _all(tmp_path / "one"), _all(tmp_path / "four")
    assert [i for i, _ in four] == [i for i, _ in one] and len(one) == 21
    for (_, a), (_, b) in zip(one, four, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="does not divide over 4 devices"):
        encode.encode_dataset(model, src, tmp_path / "bad", batch_size=6, mesh=mesh)


def test_cached_source_renders_each_record_once():
    class Counting(SyntheticSource):
        calls = 0

        def __getitem__(self, i):
            Counting.calls += 1
            return super().__getitem__(i)

    src = Counting(5, 16, num_labels=2)
    cached = CachedSource(src)
    assert len(cached) == 5 and cached.num_labels == 2
    first = [cached[i] for i in (0, 3, 0, 3, 4)]
    assert Counting.calls == 3
    np.testing.assert_array_equal(
        first[0]["image"], SyntheticSource(5, 16, num_labels=2)[0]["image"]
    )
    assert first[2] is first[0]


def test_hosts_split_the_shards(model, tmp_path):
    src = SyntheticSource(20, 32, seed=1)
    encode.encode_dataset(model, src, tmp_path / "one", shard_size=4, progress=False)
    for host in (1, 0):
        r = encode.encode_dataset(
            model,
            src,
            tmp_path / "two",
            shard_size=4,
            process_index=host,
            process_count=2,
            progress=False,
        )
        assert r.shards_written == (3 if host == 0 else 2)
    a, b = _all(tmp_path / "one"), _all(tmp_path / "two")
    assert [i for i, _ in a] == [i for i, _ in b]
    for (_, x), (_, y) in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_other_settings_are_refused(model, tmp_path):
    src = SyntheticSource(10, 32)
    encode.encode_dataset(model, src, tmp_path, shard_size=4, progress=False)
    with pytest.raises(ValueError, match="other settings.*shard_size"):
        encode.encode_dataset(model, src, tmp_path, shard_size=5, progress=False)


def test_unreadable_images_are_counted_and_the_rest_encoded(model, tmp_path):
    from llmcxr_jax.data.images import save_png

    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    src = SyntheticSource(4, 32)
    for i in range(4):
        save_png(src[i]["image"], root / f"sub/img{i}.png")
    (root / "broken.png").write_bytes(b"this is not a png")
    report = encode.encode_dataset(model, FolderSource(root, 32), tmp_path / "out", progress=False)
    assert (report.records, report.errors) == (4, 1)
    errors = codes_store.read_errors(tmp_path / "out")
    assert errors[0]["id"] == "broken.png" and "broken.png" in errors[0]["error"]
    assert [i for i, _ in _all(tmp_path / "out")] == [f"sub/img{i}.png" for i in range(4)]


def test_cli_encode_images(model, tmp_path, capsys):
    checkpoint.save_model(tmp_path / "vq", model)
    cli.main(
        [
            "encode-images",
            "--checkpoint",
            str(tmp_path / "vq"),
            "--source",
            "synthetic:6",
            "--out",
            str(tmp_path / "codes"),
            "--shard-size",
            "4",
        ]
    )
    assert "6 images encoded" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "codes" / "manifest.json").read_text())
    assert manifest["source"] == "synthetic:6" and manifest["num_shards"] == 2
    assert len(_all(tmp_path / "codes")) == 6
