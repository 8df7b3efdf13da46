"""Audio: the log-mel frontend against NumPy, the KWS backbones' golden parameter counts and
patchability, WAV reading and its errors, k-fold splits, the audio pipeline, and audio models
through SavedModel, TFLite and folding."""

import json
import os
import tempfile
import wave

import keras
import numpy as np
import pytest
import tensorflow as tf

from k4p1 import patches
from k4p1.backbones import build_backbone
from k4p1.config import BackboneSpec, DatasetSpec
from k4p1.data import load_task_data
from k4p1.data import audio as audio_data
from k4p1.errors import ConfigError, DataError
from k4p1.frontends import InputSpec, LogMelFrontend
from k4p1.model import TaskModels, recompute_batch_statistics
from k4p1.testing import tiny_task

DATA_DIR = os.environ.get("K4P1_DATA_DIR", "")
HAVE_SUBSET = bool(DATA_DIR) and os.path.exists(os.path.join(DATA_DIR, audio_data.SUBSET_TARBALL))


def _numpy_log_mel(x, rate=16000, bands=40, window=480, hop=160, fft=512, lower=20.0,
                   upper=8000.0):
  """An independent float64 log-mel: framing, periodic Hann, rfft, HTK mel triangles."""
  x = np.pad(np.asarray(x, np.float64), [(0, 0), (window // 2, window // 2)])
  count = 1 + (x.shape[1] - window) // hop
  frames = np.stack([x[:, i * hop:i * hop + window] for i in range(count)], axis=1)
  hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / window)
  power = np.abs(np.fft.rfft(frames * hann, n=fft)) ** 2            # [b, frames, fft/2+1]

  def mel(f):
    return 1127.0 * np.log(1.0 + f / 700.0)
  bins = mel(np.linspace(0, rate / 2, fft // 2 + 1))
  edges = np.linspace(mel(lower), mel(upper), bands + 2)
  weights = np.zeros((fft // 2 + 1, bands))
  for b in range(bands):
    lo, mid, hi = edges[b:b + 3]
    weights[:, b] = np.maximum(0, np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)))
  weights[0] = 0  # the DC bin is left out, as tf.signal does
  return np.log(power @ weights + 1e-6).transpose(0, 2, 1)[..., None]


def _write_wav(path, samples, rate=16000, channels=1, width=2):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with wave.open(path, "wb") as f:
    f.setnchannels(channels)
    f.setsampwidth(width)
    f.setframerate(rate)
    data = np.asarray(samples)
    if width == 2:
      f.writeframes(data.astype("<i2").tobytes())
    elif width == 3:
      v = data.astype(np.int32)
      f.writeframes(np.stack([v & 255, (v >> 8) & 255, (v >> 16) & 255], -1)
                    .astype(np.uint8).tobytes())


class FrontendTest(tf.test.TestCase):

  def test_log_mel_equals_numpy(self):
    x = np.random.RandomState(0).randn(3, 16000).astype(np.float32) * 0.1
    x[1, 4000:6000] += np.sin(np.arange(2000) * 0.3).astype(np.float32)  # a tone burst
    got = LogMelFrontend()(x).numpy()
    want = _numpy_log_mel(x)
    self.assertEqual(got.shape, (3, 40, 101, 1))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-3)

  def test_stft_form_equals_tf_signal_stft(self):
    x = np.random.RandomState(1).randn(2, 8000).astype(np.float32) * 0.2
    f = LogMelFrontend()
    padded = np.pad(x, [(0, 0), (240, 240)])
    stft = tf.signal.stft(padded, 480, 160, 512, window_fn=tf.signal.hann_window).numpy()
    want = np.log(np.abs(stft) ** 2 @ f.mel + 1e-6).transpose(0, 2, 1)[..., None]
    np.testing.assert_allclose(f(x).numpy(), want, rtol=1e-4, atol=1e-3)

  def test_framing_with_a_window_not_a_multiple_of_the_hop(self):
    # 25 ms / 10 ms: 400-sample frames every 160 samples; a length that is not a hop multiple.
    x = np.random.RandomState(2).randn(2, 8001).astype(np.float32) * 0.2
    f = LogMelFrontend(window_ms=25.0)
    padded = np.pad(x, [(0, 0), (200, 200)])
    stft = tf.signal.stft(padded, 400, 160, 512, window_fn=tf.signal.hann_window).numpy()
    want = np.log(np.abs(stft) ** 2 @ f.mel + 1e-6).transpose(0, 2, 1)[..., None]
    got = f(x).numpy()
    self.assertEqual(got.shape, (2, 40, f.frames(8001), 1))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)

  def test_banded_projection_equals_the_matrix_product(self):
    from k4p1.frontends import banded
    rng = np.random.RandomState(3)
    matrix = np.abs(rng.randn(33, 6)).astype(np.float32) * (rng.rand(33, 6) < 0.3)
    matrix[:, 2] = 0.0  # a band with no bin
    bins, weights = banded(matrix)
    x = np.abs(rng.randn(4, 7, 33)).astype(np.float32)
    got = (x[..., bins] * weights).sum(-1)
    np.testing.assert_allclose(got, x @ matrix, rtol=1e-5, atol=1e-6)
    self.assertEqual(bins.shape[1], max(1, int((matrix != 0).sum(0).max())))

  def test_a_model_with_the_frontend_saves_and_loads(self):
    f = LogMelFrontend(bands=32, freq_masks=1, freq_mask_bands=3)
    inputs = keras.Input([8000])
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(f(inputs)))
    path = os.path.join(tempfile.mkdtemp(), "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.RandomState(4).randn(2, 8000).astype(np.float32) * 0.1
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6)
    self.assertEqual(loaded.layers[1].bands, 32)

  def test_silence_gives_finite_features_and_frames_follow_length(self):
    f = LogMelFrontend()
    out = f(np.zeros((2, 16000), np.float32)).numpy()
    self.assertTrue(np.all(np.isfinite(out)))
    np.testing.assert_allclose(out, np.log(1e-6), rtol=1e-6)
    self.assertEqual(f.frames(16000), 101)
    self.assertEqual(f(np.zeros((1, 8000), np.float32)).shape, (1, 40, 51, 1))

  def test_spec_augment_masks_only_in_training(self):
    f = LogMelFrontend(freq_masks=2, freq_mask_bands=5, time_masks=2, time_mask_frames=10)
    x = np.random.RandomState(2).randn(8, 16000).astype(np.float32) * 0.1
    clean = f(x).numpy()
    np.testing.assert_array_equal(f(x, training=False).numpy(), clean)
    tf.random.set_seed(0)
    masked = f(x, training=True).numpy()
    changed = masked != clean
    self.assertTrue(changed.any())
    for i in range(8):
      bands = changed[i, :, :, 0].all(axis=1).sum()   # whole bands masked
      frames = changed[i, :, :, 0].all(axis=0).sum()  # whole frames masked
      self.assertLessEqual(bands, 10)
      self.assertLessEqual(frames, 20)
      fill = clean[i].mean()
      np.testing.assert_allclose(masked[i][changed[i]], fill, rtol=1e-5)
    f.augmenting = False
    np.testing.assert_array_equal(f(x, training=True).numpy(), clean)

  def test_bad_options(self):
    with self.assertRaisesRegex(ValueError, "lower_hz < upper_hz"):
      LogMelFrontend(upper_hz=9000)
    with self.assertRaisesRegex(ValueError, "window"):
      LogMelFrontend(window_ms=0.01)

  def test_audio_input_spec(self):
    spec = InputSpec.audio(16000)
    self.assertEqual((spec.name, spec.size, spec.sample_rate), ("waveforms", 16000, 16000))
    self.assertEqual(spec.serving_spec().shape.as_list(), [None, None])
    x = spec.to_model_input(tf.ones([2, 12000]))
    self.assertEqual(x.shape, (2, 16000))
    self.assertEqual(float(tf.reduce_sum(x)), 24000.0)
    self.assertEqual(spec.to_model_input(tf.ones([1, 20000])).shape, (1, 16000))


class BackboneTest(tf.test.TestCase):

  def _counts(self, model):
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    frozen = sum(int(np.prod(v.shape)) for v in model.non_trainable_variables)
    return trainable, frozen

  def test_golden_parameter_counts(self):
    # The papers: BC-ResNet-8 321K and BC-ResNet-1 9.2K with a 12-way classifier (Kim et al.
    # 2021), Res15 238K (Tang & Lin 2018). The backbone here stops before the classifier.
    for name, alpha, trainable, frozen, width in [("bc_resnet", 8, 317_984, 19_328, 256),
                                                  ("bc_resnet", 1, 8_836, 2_416, 32),
                                                  ("res15", 1, 237_330, 1_170, 45)]:
      b = build_backbone(BackboneSpec(name, alpha=alpha, input_size=16000, weights="none"))
      self.assertEqual(self._counts(b.model), (trainable, frozen), name)
      self.assertEqual(b.model.output_shape[-1], width)
      self.assertEqual(b.input_spec.modality, "audio")
    self.assertEqual(317_984 + 256 * 12 + 12, 321_068)
    self.assertEqual(237_330 + 45 * 12 + 12, 237_882)

  def test_every_patch_kind_patches_and_starts_at_the_base(self):
    x = np.random.RandomState(0).randn(4, 16000).astype(np.float32) * 0.1
    for name in ("bc_resnet", "res15"):
      backbone = build_backbone(BackboneSpec(name, alpha=1, input_size=16000, weights="none"))
      models = TaskModels(backbone)
      bns = [l for l in backbone.model.layers if isinstance(l, keras.layers.BatchNormalization)]
      features = backbone.frontend()(x)
      recompute_batch_statistics(backbone.model, bns, [(features, None)])
      want = backbone.model(features, training=False).numpy()
      for kind in sorted(patches.PATCH_KINDS.names()):
        if name == "res15" and kind == "depthwise":
          continue  # Res15 has no depthwise convolution
        if kind in ("top",):
          continue
        patch = f"{kind},last_layer" if kind != "full" else "full,last_layer"
        task = models.add(tiny_task(f"{name}_{kind}", patch), 12)
        got = task.patched.model(features, training=False).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{name} {kind}")

  def test_bad_backbone_settings(self):
    with self.assertRaisesRegex(ConfigError, "clip length in samples"):
      build_backbone(BackboneSpec("bc_resnet", alpha=1, input_size=224, weights="none"))
    with self.assertRaisesRegex(ConfigError, "no ImageNet"):
      build_backbone(BackboneSpec("res15", input_size=16000, weights="imagenet"))
    with self.assertRaisesRegex(ConfigError, "divisible by 8"):
      build_backbone(BackboneSpec("bc_resnet", alpha=1, input_size=16000, weights="none",
                                  audio=(("bands", 30),)))


class WavTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.root = tempfile.mkdtemp()

  def test_reads_16_and_24_bit_mono(self):
    x = (np.sin(np.arange(800) * 0.05) * 20000).astype(np.int16)
    _write_wav(os.path.join(self.root, "a.wav"), x)
    got, rate = audio_data.read_wav(os.path.join(self.root, "a.wav"))
    np.testing.assert_array_equal(got, x)
    self.assertEqual(rate, 16000)
    _write_wav(os.path.join(self.root, "b.wav"), x.astype(np.int32) * 256, width=3)
    got, _ = audio_data.read_wav(os.path.join(self.root, "b.wav"))
    np.testing.assert_array_equal(got, x)

  def test_bad_files_get_clear_errors(self):
    _write_wav(os.path.join(self.root, "stereo.wav"), np.zeros(200, np.int16), channels=2)
    with self.assertRaisesRegex(DataError, "2 channels.*sox"):
      audio_data.read_wav(os.path.join(self.root, "stereo.wav"))
    _write_wav(os.path.join(self.root, "empty.wav"), np.zeros(0, np.int16))
    with self.assertRaisesRegex(DataError, "empty"):
      audio_data.read_wav(os.path.join(self.root, "empty.wav"))
    with open(os.path.join(self.root, "junk.wav"), "wb") as f:
      f.write(b"not a wav file")
    with self.assertRaisesRegex(DataError, "not a readable PCM WAV"):
      audio_data.read_wav(os.path.join(self.root, "junk.wav"))
    a, b = os.path.join(self.root, "r16.wav"), os.path.join(self.root, "r8.wav")
    _write_wav(a, np.zeros(100, np.int16))
    _write_wav(b, np.zeros(100, np.int16), rate=8000)
    with self.assertRaisesRegex(DataError, "8000 Hz.*sox IN.wav -r 16000"):
      audio_data.read_clips([a, b], 16000)

  def _folder(self, classes=3, per_class=10, rate=16000, splits=False):
    rng = np.random.RandomState(0)
    for c in range(classes):
      for i in range(per_class):
        split = ("train" if i < per_class - 2 else "test") if splits else ""
        n = int(rng.randint(8000, 17000))
        _write_wav(os.path.join(self.root, split, f"word{c}", f"{i}.wav"),
                   rng.randint(-3000, 3000, n), rate=rate)

  def test_folder_kfold_is_stratified_and_disjoint(self):
    self._folder()
    spec = DatasetSpec(source="wav_folder", path=self.root, folds=5, fold=1, augment="none")
    data = load_task_data(spec, InputSpec.audio(16000))
    self.assertEqual(data.class_names, ("word0", "word1", "word2"))
    self.assertEqual((data.train.size, data.eval.size), (24, 6))
    train = [w.numpy().tobytes() for w, _ in data.train.dataset]
    test = [w.numpy().tobytes() for w, _ in data.eval.dataset]
    self.assertFalse(set(train) & set(test))
    labels = [int(l) for _, l in data.eval.dataset]
    self.assertEqual(sorted(labels), [0, 0, 1, 1, 2, 2])
    batch, labels = next(iter(data.eval_batches(4)))
    self.assertEqual(batch.shape, (4, 16000))
    self.assertLessEqual(float(tf.reduce_max(tf.abs(batch))), 1.0)
    folds = [set(int(i) for i in audio_data.kfold_indices(np.repeat(np.arange(3), 10), 5, k)[1])
             for k in range(5)]
    self.assertEqual(set().union(*folds), set(range(30)))
    self.assertEqual(sum(len(f) for f in folds), 30)

  def test_split_folders_and_errors(self):
    self._folder(splits=True)
    spec = DatasetSpec(source="wav_folder", path=self.root, augment="kws")
    data = load_task_data(spec, InputSpec.audio(16000))
    self.assertEqual((data.train.size, data.eval.size), (24, 6))
    batch, _ = next(iter(data.train_batches(8, seed=0)))
    self.assertEqual(batch.shape, (8, 16000))
    again, _ = next(iter(data.train_batches(8, seed=0)))
    np.testing.assert_array_equal(batch.numpy(), again.numpy())   # seeded augmentation
    with self.assertRaisesRegex(DataError, "22050 Hz"):
      load_task_data(spec, InputSpec.audio(16000, sample_rate=22050))
    with self.assertRaisesRegex(DataError, "takes images"):
      load_task_data(spec, 32)
    with self.assertRaisesRegex(DataError, "audio model"):
      load_task_data(DatasetSpec(source="digits"), InputSpec.audio(16000))
    with self.assertRaisesRegex(DataError, "dataset.folds"):
      load_task_data(DatasetSpec(source="wav_folder", path=os.path.join(self.root, "train"),
                                 augment="none"), InputSpec.audio(16000))

  def test_kws_augmentation_shifts_and_adds_noise(self):
    clip = np.zeros(16000, np.int16)
    clip[8000] = 16384
    x = audio_data.preprocess_audio_train(clip, 16000, 16000, "kws", [3, 4], noise_mode="none")
    peak = int(np.argmax(np.abs(x.numpy())))
    self.assertLessEqual(abs(peak - 8000), 1600)
    self.assertAlmostEqual(float(x[peak]), 0.5, places=6)
    noisy = [audio_data.preprocess_audio_train(clip, 16000, 16000, "kws", [i, 1]).numpy()
             for i in range(20)]
    quiet = sum(np.count_nonzero(n) <= 1 for n in noisy)
    self.assertGreater(len(noisy) - quiet, 5)     # noise on ~80% of clips
    for n in noisy:
      self.assertLessEqual(np.abs(n).max(), 1.0)
    plain = audio_data.preprocess_audio_train(clip, 16000, 16000, "none", [0, 0]).numpy()
    self.assertEqual(int(np.argmax(plain)), 8000)

  def test_synthetic_keywords_are_deterministic(self):
    a, labels, names = audio_data.synthetic_keywords(classes=3, per_class=4)
    b, _, _ = audio_data.synthetic_keywords(classes=3, per_class=4)
    np.testing.assert_array_equal(a, b)
    self.assertEqual(a.shape, (12, 16000))
    self.assertEqual(list(labels), [0] * 4 + [1] * 4 + [2] * 4)
    self.assertEqual(names[0], "keyword_00")


@pytest.mark.skipif(not HAVE_SUBSET, reason="needs the Speech Commands subset: set "
                    "K4P1_DATA_DIR to a folder holding speech_commands_subset/")
class SubsetTest(tf.test.TestCase):

  def test_subset_loads_as_five_folds(self):
    data = load_task_data(DatasetSpec(source="speech_commands_subset", augment="none"),
                          InputSpec.audio(16000))
    self.assertEqual(len(data.class_names), 12)
    self.assertIn("_silence_", data.class_names)
    self.assertEqual((data.train.size, data.eval.size), (480, 120))
    self.assertEqual(data.train.sample_rate, 16000)


class ExportTest(tf.test.TestCase):
  """An audio task model through the SavedModel (16 kHz waveforms of any length), TFLite and
  folding gives the Keras model's outputs."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    backbone = build_backbone(BackboneSpec("bc_resnet", alpha=1, input_size=16000,
                                           weights="none"))
    cls.models = TaskModels(backbone)
    task = cls.models.add(tiny_task("kws", "scale_bias,last_layer"), 12)
    rng = np.random.RandomState(0)
    cls.x = (rng.randn(6, 16000) * 0.1).astype(np.float32)
    features = backbone.frontend()(cls.x)
    bns = [l for l in task.patched.model.layers if isinstance(l, keras.layers.BatchNormalization)
           or type(l).__name__ == "ScaleBiasPatch"]
    recompute_batch_statistics(task.model, bns, [(cls.x, None)])
    for v in cls.models.task_variables("kws"):  # a trained stand-in: move off the init
      if v.trainable:
        v.assign(v.numpy() + rng.normal(0, 0.05, v.shape).astype(np.float32))
    cls.want = tf.nn.softmax(task.model(cls.x, training=False)).numpy()
    del features

  def test_saved_model_takes_waveforms_of_any_length(self):
    from k4p1.export.saved_model import export_saved_model
    out = os.path.join(tempfile.mkdtemp(), "export")
    export_saved_model(self.models, ["kws"], out)
    serve = tf.saved_model.load(out).signatures["kws"]
    self.assertEqual(list(serve.structured_input_signature[1]), ["waveforms"])
    got = serve(waveforms=tf.constant(self.x))["probabilities"].numpy()
    np.testing.assert_allclose(got, self.want, rtol=1e-4, atol=1e-5)
    short = serve(waveforms=tf.constant(self.x[:, :12000]))["probabilities"].numpy()
    padded = np.pad(self.x[:, :12000], [(0, 0), (0, 4000)])
    want_short = tf.nn.softmax(self.models.tasks["kws"].model(padded)).numpy()
    np.testing.assert_allclose(short, want_short, rtol=1e-4, atol=1e-5)

  def test_tflite_float32_and_folded_equal_the_model(self):
    from k4p1.export import fold, tflite
    data = tflite.tflite_model(self.models, ["kws"], "float32")
    got = tflite.run_tflite(data, "kws", self.x)
    np.testing.assert_allclose(got, self.want, rtol=1e-3, atol=1e-4)
    # Framing is reshape / slice / concat: no [101, 480] index table in the file (the mel
    # bands' [40, 31] bin table is the one int32 constant left).
    tables = [d["name"] for d in tflite.interpreter(data).get_tensor_details()
              if d["dtype"] == np.int32 and np.prod(d["shape"]) >= 10_000]
    self.assertEqual(tables, [])
    with self.assertRaisesRegex(Exception, r"waveforms \[n, 16000\]"):
      tflite.run_tflite(data, "kws", self.x[:, :100])
    folded = fold.fold_task(self.models, "kws")
    got = tf.nn.softmax(folded(self.x, training=False)).numpy()
    np.testing.assert_allclose(got, self.want, rtol=1e-4, atol=1e-5)

  @pytest.mark.large
  def test_tflite_int8_keeps_the_frontend_float_and_runs_the_backbone_in_int8(self):
    # A quantized frontend (a power spectrum spanning ~1e9 in 8 bits) took a trained keyword
    # spotter from 70% to 35%: the frontend must stay float, in int8 and in dynamic files.
    from ai_edge_litert.interpreter import Interpreter
    from k4p1.export import tflite
    frontend = self.models.tasks["kws"].model.get_layer(
        [l.name for l in self.models.tasks["kws"].model.layers
         if isinstance(l, LogMelFrontend)][0])
    want_features = frontend(self.x).numpy()
    for quantization in ("int8", "dynamic"):
      data = tflite.tflite_model(self.models, ["kws"], quantization,
                                 representative=lambda t: [self.x[:3], self.x[3:]])
      it = Interpreter(model_content=data, experimental_preserve_all_tensors=True)
      tensors = {d["index"]: d for d in it.get_tensor_details()}
      ops = it._get_ops_details()
      in_frontend = set(tflite.frontend_nodes(data, self.models, ["kws"]))
      self.assertGreater(len(in_frontend), 10)
      for op in ops:
        if op["op_name"] != "QUANTIZE" and tensors[op["outputs"][0]]["name"] in in_frontend:
          dtypes = {tensors[i]["dtype"] for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0}
          self.assertFalse(dtypes & {np.int8, np.uint8}, (quantization, op["op_name"]))
      self.assertTrue({"RFFT2D", "LOG"} <= {op["op_name"] for op in ops})
      self.assertNotIn("FULLY_CONNECTED", {op["op_name"] for op in ops[:20]})  # no hybrid op
      got = tflite.run_tflite(data, "kws", self.x)
      self.assertEqual(got.shape, (6, 12))
      np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-2)
      if quantization == "int8":
        convs = [op for op in ops if op["op_name"] == "CONV_2D"]
        self.assertTrue(all(tensors[op["outputs"][0]]["dtype"] == np.int8 for op in convs))
        # The features the int8 backbone receives are the Keras frontend's.
        (enter,) = [op for op in ops if op["op_name"] == "QUANTIZE"
                    and tensors[op["inputs"][0]]["name"] in in_frontend]
        runner = it.get_signature_runner("kws")
        runner(waveforms=self.x)
        np.testing.assert_allclose(it.get_tensor(enter["inputs"][0]), want_features,
                                   rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(__import__("shutil").which("espeak-ng") is None,
                    reason="needs espeak-ng (apt-get install espeak-ng)")
class CorpusTest(tf.test.TestCase):
  """bench/make_kws_corpus.py writes a reproducible corpus the wav_folder source reads."""

  def _make(self, out, seed=0):
    from k4p1.testing import run_binary
    result = run_binary("bench/make_kws_corpus.py", f"--out={out}", "--languages=en,de",
                        "--heldout=cmn", "--per_word=2", "--heldout_per_class=2",
                        f"--seed={seed}", timeout=300)
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])

  def test_layout_manifest_reproducibility_and_loading(self):
    root = tempfile.mkdtemp()
    a, b, c = (os.path.join(root, n) for n in "abc")
    self._make(a)
    self._make(b)
    self._make(c, seed=1)
    files = sorted(os.path.relpath(os.path.join(d, f), a) for d, _, names in os.walk(a)
                   for f in names if f.endswith(".wav"))
    self.assertLen(files, 2 * 12 * 2 + 12 * 2)
    for rel in files[:10]:
      with open(os.path.join(a, rel), "rb") as f1, open(os.path.join(b, rel), "rb") as f2:
        self.assertEqual(f1.read(), f2.read(), rel)   # same seed: the same clip
    with open(os.path.join(a, files[5]), "rb") as f1, open(os.path.join(c, files[5]), "rb") as f3:
      self.assertNotEqual(f1.read(), f3.read())
    with open(os.path.join(a, "manifest.json")) as f:
      manifest = json.load(f)
    self.assertEqual(len(manifest["clips"]), len(files))
    self.assertEqual(manifest["words"]["cmn"][0], "是")
    data = load_task_data(DatasetSpec(source="wav_folder", path=os.path.join(a, "pretrain"),
                                      augment="none"), InputSpec.audio(16000))
    self.assertEqual(len(data.class_names), 12)
    self.assertEqual(data.train.size + data.eval.size, 2 * 12 * 2)
    held = load_task_data(DatasetSpec(source="wav_folder", path=os.path.join(a, "heldout_cmn"),
                                      folds=2, augment="none"), InputSpec.audio(16000))
    self.assertEqual((held.train.size, held.eval.size), (12, 12))


class TfdsSpeechCommandsTest(tf.test.TestCase):

  def test_speech_commands_by_name(self):
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=8):
      d = load_task_data(DatasetSpec(source="tfds", name="speech_commands", augment="kws",
                                     train_examples=8), InputSpec.audio(16000))
      self.assertEqual(d.num_classes, 12)
      self.assertEqual(d.train.sample_rate, 16000)
      waves, labels = next(iter(d.train_batches(4, seed=0)))
      self.assertEqual(waves.shape, (4, 16000))
      self.assertEqual(waves.dtype, tf.float32)
      self.assertLessEqual(float(tf.reduce_max(tf.abs(waves))), 1.0)
