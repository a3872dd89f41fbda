# One image for every role: serve, aggregate, ingest, migrate.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY boltlink ./boltlink
RUN python -m venv /opt/boltlink \
 && /opt/boltlink/bin/pip install --no-cache-dir -c constraints.txt .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/boltlink --create-home boltlink
COPY --from=build /opt/boltlink /opt/boltlink
ENV PATH=/opt/boltlink/bin:$PATH \
    BOLTLINK_HOST=0.0.0.0 \
    BOLTLINK_DATA_DIR=/var/lib/boltlink \
    BOLTLINK_LOG_FORMAT=json
USER boltlink
WORKDIR /var/lib/boltlink
EXPOSE 8000
ENTRYPOINT ["boltlink"]
CMD ["serve"]
