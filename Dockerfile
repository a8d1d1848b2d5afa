FROM python:3.11-slim
WORKDIR /srv/bookmyevent
COPY pyproject.toml README.md ./
COPY app ./app
# The migrations ship inside the package (app/migrations): a plain install works from any directory.
RUN pip install --no-cache-dir . && useradd --system bookmyevent \
    && install -d -o bookmyevent /srv/bookmyevent/data
USER bookmyevent
# Embedded mode (no DATABASE_URL) writes ./bookmyevent.db: here, the one directory the user owns.
WORKDIR /srv/bookmyevent/data
VOLUME /srv/bookmyevent/data
ENV HOST=0.0.0.0 PORT=8000
EXPOSE 8000
# Liveness only: /readyz turns 503 while Redis is away, yet booking keeps working then.
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["bookmyevent", "serve"]
