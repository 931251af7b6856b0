"""The data flags and `DataConfig`, the data settings library functions take.

The flags of the data package are defined here, those of augmentation in
`tf_tinyse.data.augment`; `DataConfig.from_flags` reads both.
"""
import dataclasses
import re

from absl import flags
import tensorflow as tf

from tf_tinyse import audio
from tf_tinyse.data.augment import AugmentConfig
from tf_tinyse.data.corpus import DEFAULT_NOISE_SOURCE_PATTERN
from tf_tinyse.data.corpus import DEFAULT_SPEAKER_ID_PATTERN
from tf_tinyse.data.mixing import MIN_LOUDNESS_SECONDS

FLAGS = flags.FLAGS

flags.DEFINE_string("data_dir", None,
                    "Corpus folder: 'speech/' + 'noise/' (mixed on the fly) or 'clean/' + "
                    "'noisy/' (prepared pairs), each flat or with train/ test/ [valid/].")
flags.DEFINE_integer("batch_size", 32, "Training batch size (segments per batch).")
flags.DEFINE_float("segment_seconds", 0.8, "Length of a training segment in seconds.")
flags.DEFINE_float("snr_db_min", -6.0, "Lowest training/evaluation SNR (LUFS difference, dB).")
flags.DEFINE_float("snr_db_max", 9.0, "Highest training/evaluation SNR (LUFS difference, dB).")
flags.DEFINE_float("gain_db_max", 5.0,
                   "Training gain augmentation: overall gain drawn from U(-x, x) dB.")
flags.DEFINE_float("validation_fraction", 0.1,
                   "Fraction of the training speakers (speech or pairs) held out for "
                   "validation when the corpus has no valid/ split, and fraction of the noise "
                   "recordings held out when there is no noise/valid/ folder (0: none).")
flags.DEFINE_string("speaker_id_pattern", DEFAULT_SPEAKER_ID_PATTERN,
                    "Regex searched in each speech (or clean) file name without folder and "
                    "extension; its first group (the first that matched, with alternatives) is "
                    "the speaker id, and validation holds out whole speakers. The default reads "
                    "LibriSpeech names (1034-121119-0000, ls_1034_121119_0000) and VCTK / "
                    "VoiceBank names (p226_001). A file that does not match is a speaker of "
                    "its own.")
flags.DEFINE_string("noise_source_pattern", DEFAULT_NOISE_SOURCE_PATTERN,
                    "Regex searched in each noise file name without folder and extension; its "
                    "first group names the recording the file was cut from, and validation "
                    "holds out whole recordings. The default drops a trailing piece number "
                    "(rain_s00, rain_s01) or ESC-50 take letter (1-17367-A). A file that does "
                    "not match is a recording of its own.")
flags.DEFINE_bool("skip_bad_audio", False,
                  "Skip corrupt, empty, silent or NaN audio files with a warning instead of "
                  "stopping.")
flags.DEFINE_integer("data_parallel_calls", tf.data.AUTOTUNE,
                     "Batches prepared in parallel by the input pipeline (-1 = AUTOTUNE).")

flags.register_validator("batch_size", lambda v: v >= 1, "--batch_size must be >= 1")
flags.register_validator(
    "segment_seconds", lambda v: MIN_LOUDNESS_SECONDS <= v <= 60,
    f"--segment_seconds must be in [{MIN_LOUDNESS_SECONDS}, 60] (LUFS needs 0.4 s)")
flags.register_validator("gain_db_max", lambda v: 0 <= v <= 40,
                         "--gain_db_max must be in [0, 40]")
flags.register_validator("validation_fraction", lambda v: 0 <= v < 1,
                         "--validation_fraction must be in [0, 1)")


def _is_grouping_regex(value):
  try:
    return re.compile(value).groups >= 1
  except (re.error, TypeError):
    return False


for _name in ("speaker_id_pattern", "noise_source_pattern"):
  flags.register_validator(_name, _is_grouping_regex,
                           f"--{_name} must be a regular expression with a (group)")
flags.register_validator("data_parallel_calls", lambda v: v == tf.data.AUTOTUNE or v >= 1,
                         "--data_parallel_calls must be -1 (AUTOTUNE) or >= 1")
flags.register_multi_flags_validator(
    ["snr_db_min", "snr_db_max"],
    lambda d: -60 <= d["snr_db_min"] <= d["snr_db_max"] <= 60,
    "--snr_db_min must be <= --snr_db_max, both in [-60, 60]")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Data settings; library functions take this instead of reading flags."""
  batch_size: int = 32
  segment_seconds: float = 0.8
  snr_db_min: float = -6.0
  snr_db_max: float = 9.0
  gain_db_max: float = 5.0
  validation_fraction: float = 0.1
  skip_bad_audio: bool = False
  data_parallel_calls: int = tf.data.AUTOTUNE
  sample_rate: int = audio.SAMPLE_RATE
  speaker_id_pattern: str = DEFAULT_SPEAKER_ID_PATTERN
  noise_source_pattern: str = DEFAULT_NOISE_SOURCE_PATTERN
  augment: AugmentConfig = AugmentConfig()  # off

  @property
  def segment_samples(self) -> int:
    return int(round(self.segment_seconds * self.sample_rate))

  def split_options(self) -> dict:
    """The arguments of `discover_corpus` that decide the splits: `discover_corpus(dir,
    **config.split_options())`."""
    return {"validation_fraction": self.validation_fraction,
            "speaker_id_pattern": self.speaker_id_pattern,
            "noise_source_pattern": self.noise_source_pattern}

  @classmethod
  def from_flags(cls, flag_values=None) -> "DataConfig":
    """The config given by the data and augmentation flags (parsed `FLAGS` unless another
    FlagValues)."""
    f = FLAGS if flag_values is None else flag_values
    return cls(batch_size=f.batch_size, segment_seconds=f.segment_seconds,
               snr_db_min=f.snr_db_min, snr_db_max=f.snr_db_max, gain_db_max=f.gain_db_max,
               validation_fraction=f.validation_fraction, skip_bad_audio=f.skip_bad_audio,
               data_parallel_calls=f.data_parallel_calls,
               speaker_id_pattern=f.speaker_id_pattern,
               noise_source_pattern=f.noise_source_pattern,
               augment=AugmentConfig.from_flags(f))
