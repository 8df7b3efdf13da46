r"""Writes a generated multilingual keyword-spotting corpus with espeak-ng (seeded, reproducible).

The SWR paper pretrains a multilingual KWS model (English + Mandarin) and transfers it to one
language. No multilingual KWS corpus exists offline, so this script speaks the 10 Speech
Commands keywords (yes, no, up, down, left, right, on, off, stop, go), translated, in several
languages with espeak-ng (`apt-get install espeak-ng`), with many voice variants, speeds and
pitches, and mixes them with noise. Labels are language-independent concepts, so one 12-way
model (10 keywords, `_unknown_`: digits spoken in the same language, `_silence_`: noise only)
covers every language, like Speech Commands' 12-way task.

Layout (read by the `wav_folder` source):
  OUT/pretrain/{train,test}/<label>/<lang>_<word>_<n>.wav   the pretraining languages
  OUT/heldout_<lang>/<label>/*.wav                          a held-out language (k-fold)
  OUT/manifest.json                                         every clip's language, word, voice,
                                                            speed, pitch, SNR, noise colour

How it differs from real speech (why the transfer to the real Speech Commands clips is a
domain shift, not just a language shift):
  - formant synthesis (espeak-ng's): a buzzy, robotic timbre; no natural prosody, breath,
    co-articulation or speaker idiosyncrasy; every utterance of a word with the same voice,
    speed and pitch is identical before noise;
  - speakers are ~100 espeak-ng voice variants, not people; pronunciations come from espeak-ng's
    rules for each language (with its mistakes);
  - clean, dry signals: no room reverberation, microphone or channel colouring; the only
    nuisance is additive white, pink or brown noise at 5-30 dB SNR, a random start in the
    one-second window and a random loudness;
  - synthesized at 22.05 kHz, resampled to 16 kHz (scipy's polyphase filter).

Run:
  python bench/make_kws_corpus.py --out=/tmp/kws_corpus            # ~3,300 clips, about a minute
  python bench/make_kws_corpus.py --out=DIR --per_word=60 --seed=1 --heldout=cmn
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import wave

import numpy as np
from absl import app, flags

CONCEPTS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
WORDS = {
    "en": ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"),
    "de": ("ja", "nein", "hoch", "runter", "links", "rechts", "an", "aus", "halt", "los"),
    "es": ("sí", "no", "arriba", "abajo", "izquierda", "derecha", "enciende", "apaga", "para",
           "vamos"),
    "fr": ("oui", "non", "haut", "bas", "gauche", "droite", "allume", "éteins", "arrête", "va"),
    "it": ("sì", "no", "su", "giù", "sinistra", "destra", "accendi", "spegni", "ferma", "vai"),
    "pt": ("sim", "não", "cima", "baixo", "esquerda", "direita", "liga", "desliga", "pare",
           "vai"),
    "ru": ("да", "нет", "вверх", "вниз", "влево", "вправо", "включи", "выключи", "стоп", "иди"),
    "hi": ("हाँ", "नहीं", "ऊपर", "नीचे", "बाएँ", "दाएँ", "चालू", "बंद", "रुको", "चलो"),
    "cmn": ("是", "不", "上", "下", "左", "右", "开", "关", "停", "走"),
}
UNKNOWN, SILENCE = "_unknown_", "_silence_"
RATE, SYNTH_RATE, SAMPLES = 16000, 22050, 16000

_OUT = flags.DEFINE_string("out", "", "Folder to write the corpus to (created; must not exist "
                           "unless --overwrite).")
_LANGUAGES = flags.DEFINE_list("languages", ["en", "de", "es", "fr", "it", "pt", "ru", "hi"],
                               f"Pretraining languages (of {', '.join(WORDS)}).")
_HELDOUT = flags.DEFINE_string("heldout", "cmn", "A language left out of pretraining, written "
                               "as its own k-fold transfer set ('' for none).")
_PER_WORD = flags.DEFINE_integer("per_word", 30, "Utterances of each keyword per language.")
_HELDOUT_PER_CLASS = flags.DEFINE_integer("heldout_per_class", 40, "Clips per class of the "
                                          "held-out language.")
_TEST_SHARE = flags.DEFINE_float("test_share", 0.15, "Share of each pretraining class in test.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of every random choice.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out folder.")


def espeak_variants() -> list[str]:
  """espeak-ng's voice variants (m1, f2, croak, ...), sorted."""
  out = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True,
                       check=True).stdout
  names = [token.split("/", 1)[1] for line in out.splitlines()[1:] for token in line.split()
           if token.startswith("!v/")]
  return sorted(set(names))


def speak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
  """float32 samples at 16 kHz of espeak-ng saying `text`."""
  from scipy.signal import resample_poly
  with tempfile.NamedTemporaryFile(suffix=".wav") as f:
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", f.name,
                    text], check=True, capture_output=True)
    with wave.open(f.name, "rb") as w:
      if w.getframerate() != SYNTH_RATE or w.getsampwidth() != 2:
        raise RuntimeError(f"espeak-ng wrote {w.getframerate()} Hz, {8 * w.getsampwidth()}-bit "
                           f"audio; expected {SYNTH_RATE} Hz 16-bit.")
      x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
  return resample_poly(x, 320, 441).astype(np.float32)   # 22050 * 320 / 441 = 16000


def colored_noise(rng, n: int, colour: str) -> np.ndarray:
  """Unit-variance white, pink (1/f) or brown (1/f^2) noise."""
  white = rng.randn(n)
  if colour != "white":
    spectrum = np.fft.rfft(white)
    f = np.maximum(np.arange(len(spectrum)), 1.0)
    spectrum /= f ** (0.5 if colour == "pink" else 1.0)
    white = np.fft.irfft(spectrum, n)
  return (white / (white.std() + 1e-9)).astype(np.float32)


def place(rng, speech: np.ndarray, snr_db: float, colour: str) -> tuple[np.ndarray, float]:
  """The utterance at a random start in one second, with noise at `snr_db`, random loudness."""
  speech = speech[:SAMPLES]
  start = rng.randint(0, SAMPLES - len(speech) + 1)
  clip = np.zeros(SAMPLES, np.float32)
  clip[start:start + len(speech)] = speech
  power = np.mean(speech ** 2) + 1e-12
  clip += colored_noise(rng, SAMPLES, colour) * np.sqrt(power / 10 ** (snr_db / 10))
  peak = rng.uniform(0.1, 0.9)
  return clip * (peak / (np.abs(clip).max() + 1e-9)), start / RATE


def write_wav(path: str, clip: np.ndarray):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with wave.open(path, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(RATE)
    w.writeframes(np.clip(np.round(clip * 32767), -32768, 32767).astype("<i2").tobytes())


def utterance(rng, lang: str, text: str, variants) -> tuple[np.ndarray, dict]:
  variant = variants[rng.randint(len(variants))]
  speed, pitch = int(rng.randint(120, 221)), int(rng.randint(15, 86))
  speech = speak(text, f"{lang}+{variant}", speed, pitch)
  snr, colour = float(rng.uniform(5, 30)), ("white", "pink", "brown")[rng.randint(3)]
  clip, start = place(rng, speech, snr, colour)
  return clip, {"language": lang, "text": text, "voice": f"{lang}+{variant}", "speed_wpm": speed,
                "pitch": pitch, "snr_db": round(snr, 2), "noise": colour,
                "start_s": round(start, 3)}


def silence(rng) -> tuple[np.ndarray, dict]:
  colour = ("white", "pink", "brown")[rng.randint(3)]
  level = float(rng.uniform(0.001, 0.05))
  return colored_noise(rng, SAMPLES, colour) * level, {"noise": colour, "level": round(level, 4)}


def language_clips(rng, lang: str, per_class: int, variants) -> list[tuple[str, str, np.ndarray, dict]]:
  """[(label, file stem, clip, record)]: every keyword `per_class` times, `per_class` digits
  (0-9 in turn) as `_unknown_`, and `per_class` noise-only `_silence_` clips."""
  out = []
  for concept, word in zip(CONCEPTS, WORDS[lang]):
    for n in range(per_class):
      clip, rec = utterance(rng, lang, word, variants)
      out.append((concept, f"{lang}_{concept}_{n:03d}", clip, {**rec, "label": concept}))
  for n in range(per_class):
    clip, rec = utterance(rng, lang, str(n % 10), variants)
    out.append((UNKNOWN, f"{lang}_digit{n % 10}_{n:03d}", clip, {**rec, "label": UNKNOWN}))
  for n in range(per_class):
    clip, rec = silence(rng)
    out.append((SILENCE, f"{lang}_noise_{n:03d}", clip, {**rec, "label": SILENCE,
                                                         "language": lang}))
  return out


def main(argv):
  del argv
  if not _OUT.value:
    raise app.UsageError("--out is required: the folder to write the corpus to.")
  if shutil.which("espeak-ng") is None:
    raise app.UsageError("espeak-ng is not installed: `apt-get install espeak-ng`.")
  unknown = sorted(set(_LANGUAGES.value + ([_HELDOUT.value] if _HELDOUT.value else []))
                   - set(WORDS))
  if unknown:
    raise app.UsageError(f"No keyword list for {unknown}; languages: {', '.join(WORDS)}.")
  if _HELDOUT.value in _LANGUAGES.value:
    raise app.UsageError(f"--heldout={_HELDOUT.value} is also a pretraining language.")
  if os.path.exists(_OUT.value) and not _OVERWRITE.value:
    raise app.UsageError(f"{_OUT.value} exists; pass --overwrite to replace it.")
  variants = espeak_variants()
  version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
  tmp = tempfile.mkdtemp(prefix=".kws_corpus-", dir=os.path.dirname(os.path.abspath(_OUT.value)))
  # The same seed and espeak-ng version give the same corpus, clip for clip.
  manifest = {"seed": _SEED.value, "espeak_ng": version.strip(), "sample_rate": RATE,
              "languages": _LANGUAGES.value, "heldout": _HELDOUT.value,
              "words": {k: list(WORDS[k]) for k in _LANGUAGES.value + [_HELDOUT.value] if k},
              "variants": variants, "clips": {}}
  try:
    for i, lang in enumerate(_LANGUAGES.value):
      rng = np.random.RandomState([_SEED.value, i])
      clips = language_clips(rng, lang, _PER_WORD.value, variants)
      test_every = max(2, int(round(1 / max(_TEST_SHARE.value, 1e-6))))
      seen = {}
      for label, stem, clip, rec in clips:  # every test_every-th clip of each class: test
        k = seen[label] = seen.get(label, -1) + 1
        split = "test" if k % test_every == 0 else "train"
        rel = os.path.join("pretrain", split, label, f"{stem}.wav")
        write_wav(os.path.join(tmp, rel), clip)
        manifest["clips"][rel] = rec
      print(f"{lang}: {len(clips)} clips", file=sys.stderr, flush=True)
    if _HELDOUT.value:
      lang = _HELDOUT.value
      rng = np.random.RandomState([_SEED.value, 1000])
      clips = language_clips(rng, lang, _HELDOUT_PER_CLASS.value, variants)
      for label, stem, clip, rec in clips:
        rel = os.path.join(f"heldout_{lang}", label, f"{stem}.wav")
        write_wav(os.path.join(tmp, rel), clip)
        manifest["clips"][rel] = rec
      print(f"{lang} (held out): {len(clips)} clips", file=sys.stderr, flush=True)
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
      json.dump(manifest, f, ensure_ascii=False, indent=1)
    if os.path.exists(_OUT.value):
      shutil.rmtree(_OUT.value)
    os.replace(tmp, _OUT.value)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  print(f"Wrote {len(manifest['clips'])} clips to {_OUT.value}", flush=True)


if __name__ == "__main__":
  app.run(main)
