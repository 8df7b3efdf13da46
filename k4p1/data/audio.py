"""Audio data: WAV folders, the Speech Commands subset, k-fold splits and KWS augmentation.

  wav_folder              ROOT/<split>/<label>/*.wav; or ROOT/<label>/*.wav split into
                          `dataset.folds` class-stratified folds (`dataset.fold` is evaluated).
  speech_commands_subset  the Speech Commands v0.02 test-set subset tarball in
                          $K4P1_DATA_DIR/speech_commands_subset/ (600 clips, 12 classes;
                          k-fold, 5 folds unless dataset.folds says otherwise).
  synthetic_keywords      generated offline, ships with the install: 12 "keywords", each a
                          fixed two-syllable pattern of harmonic tone sweeps, spoken 60 times
                          with random pitch, tempo, onset, loudness and noise (seeded); for
                          tests and smoke runs, not speech. k-fold (5 folds by default).
  tfds                    `speech_commands` (12-way) by name: see k4p1.data.sources.

WAV files must be PCM mono at one sample rate, the model's (16 kHz for the KWS backbones): other
rates, stereo and empty files get a DataError naming the files and the `sox` command that
converts them (k4p1 does not resample silently). Clips are kept as int16, padded with zeros to
the longest clip; the pipeline pads or cuts them to the model's clip length.

Training augmentation `kws` (dataset.augment): a random time shift of up to 100 ms (zeros
shifted in) and, with probability 0.8, background noise at a volume drawn from [0, 0.1]: a
random one-second window of the WAVs under `dataset.noise` (e.g. Speech Commands'
_background_noise_), or Gaussian white noise when `noise` is '' ('none': no noise).
SpecAugment masking is the model frontend's (backbone.audio).

Example:
  data = load_task_data(DatasetSpec(source="speech_commands_subset", folds=5, fold=0,
                                    augment="kws"), InputSpec.audio(16000))
"""

from __future__ import annotations

import os
import wave

import numpy as np
import tensorflow as tf

from k4p1.data.pipeline import Split
from k4p1.errors import DataError

WAV_EXTENSIONS = (".wav",)
SUBSET_TARBALL = os.path.join("speech_commands_subset", "speech_commands_test_v0.02_subset.tar.gz")
SUBSET_FOLDS = 5
TIME_SHIFT_MS = 100.0
NOISE_PROBABILITY = 0.8
NOISE_VOLUME = 0.1


def read_wav(path: str) -> tuple[np.ndarray, int]:
  """(int16 samples [n], sample rate) of a PCM mono WAV (8/16/24/32-bit; kept as 16-bit).

  Raises:
    DataError: not a PCM WAV, not mono, or empty.
  """
  try:
    with wave.open(path, "rb") as f:
      channels, width, rate, n = f.getnchannels(), f.getsampwidth(), f.getframerate(), \
          f.getnframes()
      raw = f.readframes(n)
  except (wave.Error, EOFError, OSError) as e:
    raise DataError(f"{path}: not a readable PCM WAV file ({e}). Convert it with "
                    f"`sox IN -b 16 -e signed-integer OUT.wav`.") from e
  if channels != 1:
    raise DataError(f"{path}: {channels} channels; k4p1 reads mono audio. Convert it with "
                    f"`sox {path} -c 1 OUT.wav` (or remove it).")
  if n == 0:
    raise DataError(f"{path}: the clip is empty (0 samples). Remove it (a silent clip is fine: "
                    f"it must just have samples).")
  if width == 1:
    x = (np.frombuffer(raw, np.uint8).astype(np.int16) - 128) * 256
  elif width == 2:
    x = np.frombuffer(raw, "<i2")
  elif width == 3:
    b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
    x = (b[:, 2].astype(np.int8).astype(np.int16) << 8) | b[:, 1].astype(np.int16)
  elif width == 4:
    x = (np.frombuffer(raw, "<i4") >> 16).astype(np.int16)
  else:
    raise DataError(f"{path}: {8 * width}-bit samples are not supported; convert with "
                    f"`sox {path} -b 16 OUT.wav`.")
  return np.asarray(x, np.int16), rate


def read_clips(files, sample_rate: int = 0) -> tuple[np.ndarray, int]:
  """int16 [n, longest] (zero-padded) and the common sample rate of `files`.

  Args:
    sample_rate: the rate every file must have (0: whatever the first file has).

  Raises:
    DataError: a file is unreadable, not mono, empty, or at another rate (names the files).
  """
  clips, rates = [], {}
  for path in files:
    x, rate = read_wav(path)
    clips.append(x)
    rates.setdefault(rate, []).append(path)
  expected = sample_rate or (max(rates, key=lambda r: len(rates[r])) if rates else 0)
  wrong = {r: p for r, p in rates.items() if r != expected}
  if wrong:
    examples = "; ".join(f"{len(p)} at {r} Hz, e.g. {p[0]}" for r, p in sorted(wrong.items()))
    raise DataError(f"Clips must all be {expected} Hz ({examples}). k4p1 does not resample: "
                    f"convert them with `sox IN.wav -r {expected} OUT.wav`.")
  longest = max((len(c) for c in clips), default=0)
  out = np.zeros((len(clips), longest), np.int16)
  for i, c in enumerate(clips):
    out[i, :len(c)] = c
  return out, expected


def list_wav_folder(folder: str) -> tuple[list[str], list[str], np.ndarray]:
  """(class names, files, labels) of FOLDER/<label>/*.wav, classes in sorted order."""
  from k4p1.data.sources import list_class_folders
  if not os.path.isdir(folder):
    raise DataError(f"WAV folder {folder!r} does not exist.")
  classes, files, labels = list_class_folders(folder, WAV_EXTENSIONS)
  if not files:
    raise DataError(f"No WAV files under {folder}/<label>/*.wav.")
  return classes, files, np.array(labels, np.int32)


def kfold_indices(labels: np.ndarray, folds: int, fold: int, seed: int = 0):
  """(train, eval) indices: class-stratified folds (each class dealt round-robin in a seeded
  order), `fold` evaluated and the others trained on."""
  if folds < 2 or not 0 <= fold < folds:
    raise DataError(f"dataset.folds must be >= 2 and dataset.fold in 0..folds-1. Received: "
                    f"folds={folds}, fold={fold}")
  rng = np.random.RandomState(seed)
  assignment = np.empty(len(labels), np.int64)
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    assignment[idx] = np.arange(len(idx)) % folds
  return np.flatnonzero(assignment != fold), np.flatnonzero(assignment == fold)


def _clip_split(clips, labels, index, spec, limit, rate) -> Split:
  from k4p1.data.sources import _class_filter, stratified_subset
  mask, new_labels = _class_filter(labels[index], spec.classes)
  chosen = index[mask]
  keep = stratified_subset(new_labels, limit)
  x, y = clips[chosen[keep]], new_labels[keep]
  return Split(lambda: tf.data.Dataset.from_tensor_slices((x, y)), len(y), sample_rate=rate)


def read_wav_source(root: str, spec, folds_default: int = 0):
  """(train Split, eval Split, class names) of a WAV folder (see module docstring)."""
  folds = spec.folds or folds_default
  split_dir = os.path.join(root, spec.train_split)
  if not folds and os.path.isdir(split_dir):
    classes, files, labels = list_wav_folder(split_dir)
    eval_classes, eval_files, eval_labels = list_wav_folder(os.path.join(root, spec.eval_split))
    if eval_classes != classes:
      raise DataError(f"{root}: split {spec.eval_split!r} has classes {eval_classes}, but "
                      f"{spec.train_split!r} has {classes}.")
    clips, rate = read_clips(files + eval_files)
    every = np.concatenate([labels, eval_labels])
    train = np.arange(len(files))
    test = np.arange(len(files), len(files) + len(eval_files))
    return (_clip_split(clips, every, train, spec, spec.train_examples, rate),
            _clip_split(clips, every, test, spec, spec.eval_examples, rate), classes)
  if not folds:
    raise DataError(f"{root} has no {spec.train_split!r} split folder (ROOT/<split>/<label>/"
                    f"*.wav). For one folder of ROOT/<label>/*.wav, set dataset.folds=K (k-fold "
                    f"evaluation; dataset.fold picks the held-out fold).")
  classes, files, labels = list_wav_folder(root)
  clips, rate = read_clips(files)
  train, test = kfold_indices(labels, folds, spec.fold)
  return (_clip_split(clips, labels, train, spec, spec.train_examples, rate),
          _clip_split(clips, labels, test, spec, spec.eval_examples, rate), classes)


def noise_bank(spec, samples: int, sample_rate: int):
  """float32 [k, >= samples] noise clips for `kws` augmentation, or None (white noise)."""
  if not spec.noise or spec.noise == "none":
    return None
  files = sorted(os.path.join(d, f) for d, _, names in os.walk(spec.noise) for f in names
                 if f.lower().endswith(WAV_EXTENSIONS))
  if not files:
    raise DataError(f"dataset.noise={spec.noise!r} holds no WAV files: give a folder of noise "
                    f"recordings (e.g. Speech Commands' _background_noise_), '' for white "
                    f"noise or 'none'.")
  clips, _ = read_clips(files, sample_rate)
  if clips.shape[1] < samples:
    clips = np.pad(clips, [(0, 0), (0, samples - clips.shape[1])])
  return clips.astype(np.float32) / 32768.0


def to_float(waveform):
  """int16 samples (or floats in [-1, 1]) -> float32 in [-1, 1]."""
  waveform = tf.convert_to_tensor(waveform)
  if waveform.dtype.is_integer:
    return tf.cast(waveform, tf.float32) / 32768.0
  return tf.cast(waveform, tf.float32)


def fit_clip(waveform, samples: int):
  """[n] -> [samples]: zero-padded at the end, or the first `samples` kept."""
  waveform = to_float(waveform)[:samples]
  return tf.ensure_shape(tf.pad(waveform, [[0, samples - tf.shape(waveform)[0]]]), [samples])


def preprocess_audio_train(waveform, samples: int, sample_rate: int, augment: str, seed,
                           noise=None, noise_mode: str = ""):
  """One training clip: fitted to `samples`; with augment='kws', time-shifted and mixed with
  noise (module docstring). `seed`: int64 [2] of the stateless random ops."""
  x = fit_clip(waveform, samples)
  if augment != "kws":
    return x
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 5)
  shift = int(sample_rate * TIME_SHIFT_MS / 1000)
  offset = tf.random.stateless_uniform([], seeds[0], -shift, shift + 1, tf.int32)
  x = tf.pad(x, [[shift, shift]])[shift - offset: shift - offset + samples]
  if noise_mode == "none":
    return tf.ensure_shape(x, [samples])
  if noise is not None:
    bank = tf.constant(noise)
    clip = tf.random.stateless_uniform([], seeds[1], 0, noise.shape[0], tf.int32)
    start = tf.random.stateless_uniform([], seeds[2], 0, noise.shape[1] - samples + 1, tf.int32)
    background = bank[clip, start:start + samples]
  else:
    background = tf.random.stateless_normal([samples], seeds[1])
  volume = tf.random.stateless_uniform([], seeds[3], 0.0, NOISE_VOLUME)
  apply = tf.cast(tf.random.stateless_uniform([], seeds[4]) < NOISE_PROBABILITY, tf.float32)
  return tf.ensure_shape(tf.clip_by_value(x + apply * volume * background, -1.0, 1.0),
                         [samples])


def preprocess_audio_eval(waveform, samples: int):
  return fit_clip(waveform, samples)


SYNTHETIC_CLASSES = 12
SYNTHETIC_PER_CLASS = 60


def synthetic_keywords(classes: int = SYNTHETIC_CLASSES, per_class: int = SYNTHETIC_PER_CLASS,
                       samples: int = 16000, sample_rate: int = 16000, seed: int = 0):
  """(int16 clips [classes * per_class, samples], labels, class names): generated keywords.

  Keyword c is two "syllables", each a harmonic tone (4 harmonics, falling weights) sweeping
  between two pitches drawn once per class (seed 1234); each utterance scales pitch and tempo
  by up to +-10%, starts at a random time, has a random loudness and white noise at 10-30 dB
  SNR (seed `seed`). Deterministic. Not speech: it tests the pipeline, not accuracy.
  """
  pattern = np.random.RandomState(1234)
  syllables = pattern.uniform(120, 400, size=(classes, 2, 2))   # [class, syllable, start/end]
  lengths = pattern.uniform(0.15, 0.3, size=(classes, 2))
  rng = np.random.RandomState(seed)
  clips = np.zeros((classes * per_class, samples), np.float32)
  labels = np.repeat(np.arange(classes, dtype=np.int32), per_class)
  for i, c in enumerate(labels):
    pitch, tempo = rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.1)
    start = rng.uniform(0.05, 0.3)
    x = np.zeros(samples, np.float32)
    for j in range(2):
      n = int(lengths[c, j] * tempo * sample_rate)
      begin = int(start * sample_rate)
      if begin + n > samples:
        n = samples - begin
      f = np.linspace(syllables[c, j, 0], syllables[c, j, 1], n) * pitch
      phase = 2 * np.pi * np.cumsum(f) / sample_rate
      tone = sum(np.sin(h * phase) / h for h in range(1, 5))
      x[begin:begin + n] += (tone * np.hanning(n)).astype(np.float32)
      start += lengths[c, j] * tempo + rng.uniform(0.02, 0.08)
    x *= rng.uniform(0.1, 0.5) / max(np.abs(x).max(), 1e-6)
    noise = rng.randn(samples).astype(np.float32)
    snr = rng.uniform(10, 30)
    x += noise * np.sqrt(np.mean(x ** 2) / 10 ** (snr / 10))
    clips[i] = x
  clips = np.clip(np.round(clips * 32767), -32768, 32767).astype(np.int16)
  return clips, labels, [f"keyword_{c:02d}" for c in range(classes)]


def _read_synthetic(spec, data_dir, download):
  clips, labels, names = synthetic_keywords()
  train, test = kfold_indices(labels, spec.folds or SUBSET_FOLDS, spec.fold)
  return (_clip_split(clips, labels, train, spec, spec.train_examples, 16000),
          _clip_split(clips, labels, test, spec, spec.eval_examples, 16000), names)


def _subset_root(spec):
  from k4p1.data.sources import _default_path, extract_tarball
  tarball = _default_path(spec, SUBSET_TARBALL, "speech_commands_subset")
  if os.path.isdir(tarball):
    return tarball
  root = extract_tarball(tarball, "speech_commands_subset")
  inner = os.path.join(root, "speech_commands_subset")
  return inner if os.path.isdir(inner) else root


def _wav_root(spec):
  from k4p1.data.sources import _default_path
  return _default_path(spec, "", "wav_folder")


def _count_classes(root, spec):
  split_dir = os.path.join(root, spec.train_split)
  folder = split_dir if not spec.folds and os.path.isdir(split_dir) else root
  from k4p1.data.sources import class_order
  return len(class_order(d for d in os.listdir(folder)
                         if os.path.isdir(os.path.join(folder, d))))


def _register():
  from k4p1.data.sources import DATA_SOURCES, DataSource
  DATA_SOURCES.register("wav_folder", DataSource(
      lambda spec, data_dir, download: read_wav_source(_wav_root(spec), spec),
      lambda spec, data_dir: _count_classes(_wav_root(spec), spec),
      "ROOT/<split>/<label>/*.wav, or ROOT/<label>/*.wav with dataset.folds (mono PCM WAV)"))
  DATA_SOURCES.register("speech_commands_subset", DataSource(
      lambda spec, data_dir, download: read_wav_source(_subset_root(spec), spec, SUBSET_FOLDS),
      lambda spec, data_dir: 12,
      "the 600-clip Speech Commands v0.02 subset tarball (12 classes; k-fold)"))
  DATA_SOURCES.register("synthetic_keywords", DataSource(
      _read_synthetic, lambda spec, data_dir: SYNTHETIC_CLASSES,
      "generated tone-pattern keywords, 16 kHz (ships with the install; not speech)"))


_register()
