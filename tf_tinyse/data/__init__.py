"""Training and evaluation data: one concept a module, every public name re-exported here.

  * `corpus`: corpus layouts (`speech/` + `noise/`, `clean/` + `noisy/`), splits (validation
    held out by whole speakers and noise recordings), loading the waveforms (`AudioSet`);
  * `mixing`: BS.1770 loudness (LUFS), mixing at a LUFS SNR, clip protection;
  * `augment`: augmentation of the speech and noise of a training example (off by default);
  * `stream`: the training `tf.data` stream, a pure function of (seed, batch index);
  * `evaluation`: deterministic whole-utterance evaluation sets;
  * `probe_noise`: synthetic tones and clicks that score a model on noise kinds no recording
    held (evaluation only);
  * `config`: the data flags and `DataConfig` (augmentation flags live in `augment`).

Callers use `from tf_tinyse import data` and `data.<name>`.
"""
from tf_tinyse.data import augment
from tf_tinyse.data import config
from tf_tinyse.data import corpus
from tf_tinyse.data import evaluation
from tf_tinyse.data import mixing
from tf_tinyse.data import probe_noise
from tf_tinyse.data import stream
from tf_tinyse.data.augment import AugmentConfig
from tf_tinyse.data.config import DataConfig
from tf_tinyse.data.corpus import AudioSet
from tf_tinyse.data.corpus import Corpus
from tf_tinyse.data.corpus import DEFAULT_NOISE_SOURCE_PATTERN
from tf_tinyse.data.corpus import DEFAULT_SPEAKER_ID_PATTERN
from tf_tinyse.data.corpus import discover_corpus
from tf_tinyse.data.corpus import load_audio_set
from tf_tinyse.data.corpus import noise_source
from tf_tinyse.data.corpus import PAIRS
from tf_tinyse.data.corpus import speaker_id
from tf_tinyse.data.corpus import SPEECH_NOISE
from tf_tinyse.data.corpus import SplitFiles
from tf_tinyse.data.corpus import SPLITS
from tf_tinyse.data.evaluation import Example
from tf_tinyse.data.evaluation import make_evaluation_set
from tf_tinyse.data.mixing import CLIP_PEAK
from tf_tinyse.data.mixing import loudness
from tf_tinyse.data.mixing import MIN_LOUDNESS_SECONDS
from tf_tinyse.data.mixing import mix_at_snr
from tf_tinyse.data.mixing import TooQuietError
from tf_tinyse.data.stream import make_training_dataset
