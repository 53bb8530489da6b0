// The console's login page: a local account's user name and password, posted as JSON to
// /auth/login; on success, back to where the app was (?next=, a path of this console only).
// No inline script (the console's Content-Security-Policy forbids it). English and Simplified
// Chinese, chosen from the browser's language or the switch (shared with the app: "mgw-lang").
"use strict";

const T = {
  en: {
    title: "Modality gateway fleet", heading: "Log in", user: "User name", password: "Password", submit: "Log in",
    refused: "User name or password not accepted.", busy: "Logging in…", missing: "Enter your user name and password.",
    failed: "The console did not answer; try again.", switch: "中文",
    oidc: "Log in with your organisation's account",
  },
  zh: {
    title: "影像网关设备总览", heading: "登录", user: "用户名", password: "密码", submit: "登录",
    refused: "用户名或密码不正确。", busy: "正在登录…", missing: "请输入用户名和密码。",
    failed: "控制台没有响应，请重试。", switch: "English",
    oidc: "使用所在机构的账号登录",
  },
};

let lang = localStorage.getItem("mgw-lang") ||
  ((navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en");

function t(key) {
  return (T[lang] && T[lang][key]) || T.en[key] || key;
}

function render() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  for (const el of document.querySelectorAll("[data-t]")) el.textContent = t(el.dataset.t);
  document.getElementById("lang").textContent = t("switch");
  document.title = `mgw: ${t("heading")}`;
}

function nextPath() {
  const next = new URLSearchParams(location.search).get("next") || "/";
  // only a path of this console: not "//host", not "/\host", not a scheme
  return /^\/(?![\/\\])[^\s]*$/.test(next) && !next.startsWith("/login.html") ? next : "/";
}

function showError(key) {
  const el = document.getElementById("login-error");
  el.dataset.t = key;
  el.textContent = key ? t(key) : "";
}

async function submit(event) {
  event.preventDefault();
  const user = document.getElementById("user").value.trim();
  const password = document.getElementById("password").value;
  if (!user || !password) return showError("missing");
  const button = document.getElementById("login");
  button.disabled = true;
  showError("busy");
  try {
    const rsp = await fetch("/auth/login", {
      method: "POST", credentials: "same-origin", cache: "no-store",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify({ user, password }),
    });
    if (rsp.ok) {
      location.replace(nextPath());
      return;
    }
    showError(rsp.status === 401 || rsp.status === 400 ? "refused" : "failed");
  } catch (e) {
    showError("failed");
  } finally {
    button.disabled = false;
  }
}

document.getElementById("lang").addEventListener("click", () => {
  lang = lang === "zh" ? "en" : "zh";
  localStorage.setItem("mgw-lang", lang);
  render();
});
document.getElementById("login-form").addEventListener("submit", submit);
render();
// OpenID Connect, when this console has a provider configured
fetch("/auth/methods", { cache: "no-store" }).then((rsp) => rsp.ok ? rsp.json() : {}).then((methods) => {
  document.getElementById("oidc-login").hidden = !methods.oidc;
}).catch(() => {});
