"""Person search over a camera gallery: FAISS indexes of embeddings, queries, answers.

- :mod:`psta.search.frames`: embed in-memory frames exactly as evaluation embeds the cache;
- :mod:`psta.search.vectors`: flat / HNSW / IVF FAISS indexes with filtered search;
- :mod:`psta.search.gallery`: the gallery directory (index + Parquet tables + header);
- :mod:`psta.search.queries`: queries from a folder of crops or a video track, filters;
- :mod:`psta.search.results`, :mod:`psta.search.html`: the answer as JSON and as a page.
"""
