"""URLs and views of the tiny Django project: unchanged Django cache calls."""

from __future__ import annotations

from typing import Any

from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, HttpResponseNotFound
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from .common import answer


@csrf_exempt
def view(request: HttpRequest, route: str) -> HttpResponse:
    params = {name: request.GET[name] for name in request.GET}
    body = answer(
        route,
        params,
        cache.get,
        cache.set,
        lambda key, loader: cache.get_or_set(key, loader),
    )
    if body is None:
        return HttpResponseNotFound("not found")
    return HttpResponse(body, content_type="application/json")


urlpatterns: list[Any] = [path("<str:route>", view)]
