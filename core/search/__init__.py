"""Finding the chunks that answer a query: fusion of ranked lists and hybrid search with filters."""
