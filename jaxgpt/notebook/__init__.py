"""The notebook builder: `python -m jaxgpt.notebook` writes challenge.ipynb from the lessons and the task
stubs (jaxgpt/notebook/build.py)."""
