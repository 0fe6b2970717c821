"""One module per upstream, behind the ``Provider`` protocol in ``base``. Only these modules
import ollama, openai or llama_cpp; the engine imports the one the settings name."""
