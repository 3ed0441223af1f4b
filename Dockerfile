# fastif on a CUDA machine: the dashboard, the worker on every visible GPU, faiss-gpu.
#   docker build -t fastif .
#   docker run --gpus all -p 127.0.0.1:8501:8501 -v "$PWD/workspaces:/app/workspaces" fastif
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FASTIF_WORKSPACE=/app/workspaces/demo

WORKDIR /app
COPY requirements-gpu.txt ./
RUN pip install --no-cache-dir -r requirements-gpu.txt

COPY pyproject.toml README.md ./
COPY fastif_core ./fastif_core
COPY app ./app
COPY assets ./assets
COPY .streamlit ./.streamlit
RUN pip install --no-cache-dir --no-deps -e .

RUN useradd --create-home --uid 10001 fastif && mkdir -p /app/workspaces && chown -R 10001 /app/workspaces
USER 10001

EXPOSE 8501
HEALTHCHECK CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health')"]
# Inside the container the app must listen on all interfaces; publish the port on 127.0.0.1 only (above).
CMD ["streamlit", "run", "app/dashboard.py", "--server.address=0.0.0.0", "--server.port=8501"]
