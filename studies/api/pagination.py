"""Page-number pagination: ?page=N&page_size=M (max 500)."""

from rest_framework.pagination import PageNumberPagination


class Pagination(PageNumberPagination):
    """50 rows a page by default; clients may ask for up to 500."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
