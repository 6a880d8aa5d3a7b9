# The Berth operator image: built with the locked dependencies, run as a non-root
# user on a distroless base (no shell, no package manager).
# Build: docker build -t ghcr.io/berth-dev/berth:0.1.0 .
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Integration tests are not built into the image, but Cargo needs their target to exist.
COPY tests/it/main.rs ./tests/it/main.rs
RUN cargo build --release --locked --bin berth

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/berth /usr/local/bin/berth
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/berth"]
CMD ["serve"]
