"""BEiT and what only it uses: the k-means visual tokenizer (interface, codes, files), its fitting, and where a
run's codebook comes from (fitted, loaded or restored, and checked: `tokenizer_lifecycle`)."""

from sslvit.methods.beit.method import BEiT
from sslvit.methods.beit.tokenizer import KMeansTokenizer, VisualTokenizer, load_tokenizer
from sslvit.methods.beit.tokenizer_fit import CodebookConfig, fit_kmeans_tokenizer, fit_tokenizer_on_data

__all__ = [
    "BEiT",
    "CodebookConfig",
    "KMeansTokenizer",
    "VisualTokenizer",
    "fit_kmeans_tokenizer",
    "fit_tokenizer_on_data",
    "load_tokenizer",
]
