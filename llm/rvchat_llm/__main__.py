"""``python -m rvchat_llm``: run the LLM service."""

from rvchat_common.streaming import serve

from .app import create_app
from .settings import Settings

if __name__ == "__main__":
    serve(create_app, Settings())
