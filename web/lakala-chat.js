/* 拉卡拉客服助手 web chat: Rasa Webchat (npm rasa-webchat, served from this same server) with
 * Chinese defaults and an input-method guard. To embed it in any page:
 *
 *   <script src="https://chat.example.com/lakala-chat.js"></script>
 *   <script>LakalaChat.init({ socketUrl: "https://bot.example.com" });</script>
 *
 * Any Rasa Webchat prop can be passed to init(); `selector` renders into that element
 * instead of a launcher in the corner. */
(function () {
  "use strict";

  var script = document.currentScript;
  var base = script ? script.src.replace(/[^/?#]*([?#].*)?$/, "") : "/";

  var defaults = {
    socketPath: "/socket.io/",
    initPayload: "/greet",
    title: "拉卡拉客服助手",
    subtitle: "POS机 · 收款宝 · 账户服务",
    inputTextFieldHint: "请输入您的问题，例如：押金能退吗",
    connectingText: "正在连接客服…",
    hideWhenNotConnected: false,
    withRules: false,
    // A new tab starts a new conversation; a reload continues it. Terminal details are not
    // left behind in the browser once the tab is closed.
    params: { storage: "session" },
    // WebSocket only: a connection is one request, so any replica behind nginx can hold it
    // without sticky sessions (make cluster), and no long-polling fallback is kept open.
    protocolOptions: { transports: ["websocket"] },
    customMessageDelay: function (message) {
      return Math.min(1200, 300 + 10 * message.length);
    }
  };

  // Chinese is typed through an input method, where Enter picks a candidate or commits the
  // letters typed so far. Rasa Webchat sends on any keydown with keyCode 13 and does not look
  // at isComposing, so where a browser reports that Enter as 13 the half-typed pinyin is sent.
  // This listener runs before the widget's (capture, on window) and keeps such an Enter from
  // it; keyCode 229 (the key went to the input method) is left alone, the widget ignores it.
  var composing = false;
  function inSender(target) {
    return Boolean(target && target.closest && target.closest(".rw-sender"));
  }
  document.addEventListener("compositionstart", function (event) {
    if (inSender(event.target)) composing = true;
  }, true);
  document.addEventListener("compositionend", function () {
    composing = false;
  }, true);
  window.addEventListener("keydown", function (event) {
    if (event.keyCode === 13 && (composing || event.isComposing) && inSender(event.target)) {
      event.stopImmediatePropagation();
      event.preventDefault();  // no line break in the message either
    }
  }, true);

  function addStylesheet() {
    var link = document.createElement("link");
    link.rel = "stylesheet";
    link.href = base + "lakala-chat.css";
    document.head.appendChild(link);
  }

  var pending = [];
  var state = "idle";
  function load() {
    state = "loading";
    var widget = document.createElement("script");
    widget.src = base + "widget/rasa-webchat.js";
    widget.onload = function () {
      state = "ready";
      addStylesheet();  // after the widget's own styles, so ours win
      pending.splice(0).forEach(start);
    };
    widget.onerror = function () {
      state = "idle";
      console.error("拉卡拉客服助手: could not load " + widget.src);
    };
    document.head.appendChild(widget);
  }

  function start(options) {
    var props = {};
    Object.keys(defaults).forEach(function (key) { props[key] = defaults[key]; });
    Object.keys(options).forEach(function (key) { props[key] = options[key]; });
    var element = null;
    if (props.selector) {
      element = document.querySelector(props.selector);
      props.embedded = true;
    }
    delete props.selector;
    window.WebChat.default(props, element);
  }

  window.LakalaChat = {
    init: function (options) {
      options = options || {};
      if (!options.socketUrl) throw new Error("LakalaChat.init: socketUrl is required");
      if (state === "ready") return start(options);
      pending.push(options);
      if (state === "idle") load();
    }
  };
})();
